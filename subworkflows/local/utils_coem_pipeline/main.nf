/*
 * Pipeline utilities written for COEM-nf (no plugins): --help and parameter validation driven by
 * nextflow_schema.json, the software-versions and parameter-summary sections of the report.
 */

import groovy.json.JsonSlurper
import org.yaml.snakeyaml.Yaml

// All parameter definitions of nextflow_schema.json, flattened: name -> definition.
def schemaParams() {
    def schema = new JsonSlurper().parse(file("${projectDir}/nextflow_schema.json").toFile())
    def params_def = [:]
    schema.get('$defs', [:]).each { group, body ->
        def required = body.get('required', [])
        body.properties.each { name, definition ->
            params_def[name] = definition + [group: body.title ?: group, required_param: name in required]
        }
    }
    return params_def
}

// `--help`: the parameters, grouped as in the schema.
def helpMessage() {
    def lines = [
        "",
        "COEM-nf ${workflow.manifest.version}: ${workflow.manifest.description}",
        "",
        "Usage:",
        "  ./nextflow run . --input samplesheet.csv --outdir results -profile <docker|singularity|test|gpu|...>",
        "",
    ]
    schemaParams().groupBy { it.value.group }.each { group, entries ->
        lines << "${group}:"
        entries.each { name, d ->
            def dflt = d.containsKey('default') ? " [default: ${d.default}]" : ''
            def choices = d.enum ? " (${d.enum.join('|')})" : ''
            lines << "  --${name.padRight(26)} ${d.description ?: ''}${choices}${dflt}"
        }
        lines << ""
    }
    lines << "Docs: docs/usage.md (samplesheet, profiles, GPU, cloud) and docs/output.md."
    return lines.join('\n')
}

// Edit distance between two names (insertions, deletions, substitutions), for "did you mean".
def levenshtein(String a, String b) {
    def prev = (0..b.length()).toList()
    for (int i = 1; i <= a.length(); i++) {
        def cur = [i]
        for (int j = 1; j <= b.length(); j++) {
            def cost = a[i - 1] == b[j - 1] ? 0 : 1
            cur << [prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost].min()
        }
        prev = cur
    }
    return prev[b.length()]
}

// Check params against nextflow_schema.json: unknown names, types, choices, required.
def validateParameters() {
    def defs = schemaParams()
    def errors = []
    def unknown = []
    def ignored = ['help', 'version', 'validate_params', 'config_profile_name', 'config_profile_description']
    params.each { name, value ->
        if (name in ignored || name.contains('-')) { return }   // Nextflow also exposes camelCase/kebab copies
        def d = defs[name]
        if (d == null) {
            if (!(name ==~ /.*[A-Z].*/)) { unknown << name }
            return
        }
        if (value == null) { return }
        def type = d.type instanceof List ? d.type : [d.type]
        def ok = type.any { t ->
            (t == 'string' && value instanceof CharSequence) ||
            (t == 'integer' && (value instanceof Integer || value instanceof Long)) ||
            (t == 'number' && value instanceof Number) ||
            (t == 'boolean' && value instanceof Boolean) ||
            (t == 'null')
        }
        if (!ok) { errors << "--${name}: expected ${type.join(' or ')}, got '${value}'" }
        if (d.enum && !(value in d.enum)) { errors << "--${name}: '${value}' is not one of ${d.enum.join(', ')}" }
        if (d.minimum != null && value instanceof Number && value < d.minimum) { errors << "--${name}: ${value} is below the minimum ${d.minimum}" }
        if (d.exclusiveMinimum != null && value instanceof Number && value <= d.exclusiveMinimum) { errors << "--${name}: ${value} must be above ${d.exclusiveMinimum}" }
        if (d.maximum != null && value instanceof Number && value > d.maximum) { errors << "--${name}: ${value} is above the maximum ${d.maximum}" }
    }
    // A misspelt name fails at once, naming the closest known one (one line per unknown name).
    if (unknown) {
        def known = defs.keySet() + ignored
        error(unknown.collect { n ->
            def best = known.min { levenshtein(n, it) }
            "Unknown parameter --${n}: did you mean --${best}? (all parameters: ./nextflow run . --help)"
        }.join('\n'))
    }
    defs.findAll { n, d -> d.required_param && !params[n] }.each { n, d -> errors << "--${n} is required" }
    if (errors) {
        error("Invalid parameters:\n  " + errors.join('\n  ') + "\nSee ./nextflow run . --help")
    }
}

// Merge every process's versions.yml into the report's software-versions section.
def softwareVersionsToYAML(ch_versions) {
    return ch_versions
        .unique()
        .map { f -> new Yaml().load(f.text) }
        .collect()
        .map { maps ->
            def merged = new TreeMap()
            maps.each { m -> m.each { proc, tools -> merged[proc.tokenize(':')[-1]] = tools } }
            merged['Workflow'] = [Nextflow: workflow.nextflow.version.toString(), 'coem-nf': workflow.manifest.version.toString()]
            new Yaml().dump(merged)
        }
}

// pipeline_info/run_summary.tsv: one row per sample (ok, or failed at STEP with its error line),
// then one row per warning (sample, 'warning', step, message). Sorted, so -resume finds it equal.
def runSummaryTable(List ids, List failed, List warned) {
    def clean = { s -> s.toString().replaceAll(/[\t\r\n]+/, ' ').trim() }
    def failedBy = [:]
    failed.each { id, step, message -> if (!failedBy.containsKey(id)) { failedBy[id] = [step, message] } }
    def rows = ['sample\tstatus\tstep\tmessage']
    ids.unique().sort().each { id ->
        def f = failedBy[id]
        rows << (f ? "${id}\tfailed\t${f[0]}\t${clean(f[1])}" : "${id}\tok\t-\tfinished every step")
    }
    warned.collect { it.toString() }.unique().sort().each { line ->
        def parts = line.split('\t', 3) as List
        while (parts.size() < 3) { parts = ['-'] + parts }
        rows << "${clean(parts[0])}\twarning\t${clean(parts[1])}\t${clean(parts[2])}"
    }
    return rows.join('\n') + '\n'
}

// The same as a MultiQC section ("Warnings and failed samples"). A good run: every sample ok and
// no warning, which the section says in one line.
def runSummaryMultiqc(String tsv) {
    def esc = { s -> s.toString().replace('&', '&amp;').replace('<', '&lt;').replace('>', '&gt;') }
    def rows = tsv.readLines().drop(1).collect { it.split('\t', 4) as List }
    def bad = rows.findAll { it[1] != 'ok' }
    def nfail = rows.count { it[1] == 'failed' }
    def nwarn = rows.count { it[1] == 'warning' }
    def head = bad
        ? "<p><strong>${nfail} failed sample(s), ${nwarn} warning(s).</strong> A failed sample stopped at the step named; the other samples ran to the end and are published.</p>"
        : "<p>No failed sample and no warning: this is what a good run looks like.</p>"
    def table = bad
        ? "<table class=\"table table-condensed\"><tr><th>sample</th><th>status</th><th>step</th><th>message</th></tr>" +
          bad.collect { r -> "<tr>" + r.collect { "<td>${esc(it)}</td>" }.join('') + "</tr>" }.join('') + "</table>"
        : ''
    def oks = rows.findAll { it[1] == 'ok' }.collect { it[0] }
    def html = head + table + (oks ? "<p>Samples that finished every step: ${esc(oks.join(', '))}.</p>" : '')
    return [
        "id: 'coem_run_summary'",
        "section_name: 'Warnings and failed samples'",
        "description: 'Every failed sample (the step and its error) and every warning of this run (also in pipeline_info/run_summary.tsv). Good: empty.'",
        "plot_type: 'html'",
        "data: |",
        "    ${html}",
    ].join('\n')
}

// The end-of-run block: every sample's fate and every warning, from pipeline_info/run_summary.tsv.
def runSummaryLines(String tsv) {
    def rows = tsv.readLines().drop(1).collect { it.split('\t', 4) as List }
    def lines = ['Samples:']
    rows.findAll { it[1] != 'warning' }.each { r ->
        lines << (r[1] == 'ok' ? "  ${r[0]}: ok" : "  ${r[0]}: failed at ${r[2]}: ${r[3]}")
    }
    def warned = rows.findAll { it[1] == 'warning' }
    lines << (warned ? "Warnings (${warned.size()}):" : 'Warnings: none')
    warned.each { r -> lines << "  ${r[0]} (${r[2]}): ${r[3]}" }
    return lines
}

// The run's parameters as an HTML section of the MultiQC report.
def paramsSummaryMultiqc() {
    def defs = schemaParams()
    def rows = params.findAll { n, v -> defs.containsKey(n) && v != null && v != '' }
        .collect { n, v -> "<tr><th>--${n}</th><td><code>${v}</code></td></tr>" }
    rows << "<tr><th>profile</th><td><code>${workflow.profile}</code></td></tr>"
    rows << "<tr><th>container engine</th><td><code>${workflow.containerEngine ?: 'none'}</code></td></tr>"
    // Nothing that changes from run to run (run name, dates): -resume must find the report cached.
    def html = "<table class=\"table table-condensed\">${rows.join('')}</table>"
    return [
        "id: 'coem-params-summary'",
        "section_name: 'COEM-nf parameters'",
        "description: 'Parameters of this run (defaults included).'",
        "plot_type: 'html'",
        "data: |",
        "    ${html}",
    ].join('\n')
}

// Run before any work: --help / --version, parameter checks, and the samplesheet's presence.
def initialisePipeline() {
    if (params.help) {
        log.info(helpMessage())
        System.exit(0)
    }
    if (params.version) {
        log.info("coem-nf ${workflow.manifest.version}")
        System.exit(0)
    }
    if (params.validate_params) {
        validateParameters()
    }
    if (!params.input) {
        error("Missing --input: give a samplesheet CSV (see docs/usage.md), e.g. --input samplesheet.csv")
    }
    def samplesheet = file(params.input)
    if (!samplesheet.exists()) {
        error("Samplesheet not found: ${params.input}")
    }
    return samplesheet
}

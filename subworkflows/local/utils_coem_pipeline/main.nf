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

// Check params against nextflow_schema.json: unknown names, types, choices, required.
def validateParameters() {
    def defs = schemaParams()
    def errors = []
    def ignored = ['help', 'version', 'validate_params', 'config_profile_name', 'config_profile_description']
    params.each { name, value ->
        if (name in ignored || name.contains('-')) { return }   // Nextflow also exposes camelCase/kebab copies
        def d = defs[name]
        if (d == null) {
            if (!(name ==~ /.*[A-Z].*/)) { log.warn("Unknown parameter --${name} (not in nextflow_schema.json)") }
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

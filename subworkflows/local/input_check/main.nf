/*
 * Validate the samplesheet (our own code, bin/coem_samplesheet_check.py) before any work starts,
 * then turn each row into [ meta, h5, h5mu, rna, atac, labels, annotation ] for QC, and
 * [ meta, links ] (known peak-to-gene links, or []) for PEAK2GENE.
 */

include { SAMPLESHEET_CHECK } from '../../../modules/local/samplesheet_check'

// A file named in the samplesheet, staged by Nextflow; a missing one fails here with its line.
def samplesheetFile(Map row, String column) {
    def value = row[column]
    if (!value) {
        return []
    }
    def f = file(value)
    if (!f.exists()) {
        error("Samplesheet line ${row.line}, sample '${row.sample}', column '${column}': file not found: ${value}")
    }
    return f
}

// Columns that name files (relative paths resolve against the samplesheet's folder).
def fileColumns() { ['h5', 'h5mu', 'rna', 'atac', 'labels', 'annotation', 'links'] }

// A samplesheet that lives remotely (http(s)://, s3://, gs://, az://, ftp://): its relative paths
// resolve against its remote folder. Returns a local copy in the work dir whose relative paths
// are replaced by those URLs (absolute paths and URLs are kept); a local samplesheet as it is.
def resolveRemoteSamplesheet(samplesheet) {
    if (samplesheet.scheme == 'file') {
        return samplesheet
    }
    def base = samplesheet.parent
    def lines = samplesheet.text.readLines()
    def header = lines ? lines[0].split(',', -1).collect { it.trim() } : []
    def resolved = lines.withIndex().collect { line, i ->
        if (i == 0 || !line.trim()) { return line }
        def cells = line.split(',', -1) as List
        cells.withIndex().collect { cell, j ->
            def value = cell.trim()
            def isFile = j < header.size() && header[j] in fileColumns()
            def absolute = value.startsWith('/') || value ==~ /^[a-zA-Z][a-zA-Z0-9+.-]*:\/\/.*/
            isFile && value && !absolute ? base.resolve(value).toUriString() : cell
        }.join(',')
    }
    def local = file("${workflow.workDir}/coem_remote_samplesheet/${samplesheet.name}")
    local.parent.mkdirs()
    local.text = resolved.join('\n') + '\n'
    log.info("Samplesheet ${samplesheet.toUriString()}: relative paths resolved against ${base.toUriString()}/")
    return local
}

workflow INPUT_CHECK {
    take:
    samplesheet // file: the user's samplesheet (local or remote)

    main:
    def sheet = resolveRemoteSamplesheet(samplesheet)
    SAMPLESHEET_CHECK(sheet, sheet.toAbsolutePath().parent.toString())

    ch_rows = SAMPLESHEET_CHECK.out.csv
        .splitCsv(header: true, strip: true, quote: '"')  // a quoted path may hold a comma
        .map { row ->
            def kind = row.h5 ? 'h5' : row.h5mu ? 'h5mu' : 'pair'
            def meta = [id: row.sample, input_kind: kind, has_labels: row.labels as boolean]
            [meta, row]
        }
    ch_samples = ch_rows
        .map { meta, row ->
            [
                meta,
                samplesheetFile(row, 'h5'),
                samplesheetFile(row, 'h5mu'),
                samplesheetFile(row, 'rna'),
                samplesheetFile(row, 'atac'),
                samplesheetFile(row, 'labels'),
                samplesheetFile(row, 'annotation'),
            ]
        }

    ch_known_links = ch_rows.map { meta, row -> [meta, samplesheetFile(row, 'links')] }

    emit:
    samples     = ch_samples                     // [ meta, h5, h5mu, rna, atac, labels, annotation ]
    known_links = ch_known_links                 // [ meta, links or [] ]
    versions = SAMPLESHEET_CHECK.out.versions
}

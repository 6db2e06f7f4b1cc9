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

workflow INPUT_CHECK {
    take:
    samplesheet // file: the user's samplesheet

    main:
    SAMPLESHEET_CHECK(samplesheet, samplesheet.toAbsolutePath().parent.toString())

    ch_rows = SAMPLESHEET_CHECK.out.csv
        .splitCsv(header: true, strip: true)
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

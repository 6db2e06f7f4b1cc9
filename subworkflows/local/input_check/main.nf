/*
 * Validate the samplesheet (our own code, bin/coem_samplesheet_check.py) before any work starts,
 * then turn each row into [ meta, h5, h5mu, rna, atac, labels, annotation ] for QC.
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

    ch_samples = SAMPLESHEET_CHECK.out.csv
        .splitCsv(header: true, strip: true)
        .map { row ->
            def kind = row.h5 ? 'h5' : row.h5mu ? 'h5mu' : 'pair'
            def meta = [id: row.sample, input_kind: kind, has_labels: row.labels as boolean]
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

    emit:
    samples  = ch_samples                        // [ meta, h5, h5mu, rna, atac, labels, annotation ]
    versions = SAMPLESHEET_CHECK.out.versions
}

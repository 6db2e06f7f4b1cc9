#!/usr/bin/env nextflow
/*
 * COEM-nf: metacells for paired single-cell multiome data (RNA + ATAC) with the COEM method.
 * Docs: README.md, docs/usage.md, docs/output.md.
 */

include { COEM               } from './workflows/coem'
include { initialisePipeline } from './subworkflows/local/utils_coem_pipeline'

// Named workflow, so the pipeline can be imported by another one.
workflow COEM_NF {
    take:
    samplesheet

    main:
    COEM(samplesheet)

    emit:
    multiqc_report = COEM.out.multiqc_report
}

workflow {
    COEM_NF(initialisePipeline())
}

workflow.onComplete {
    if (workflow.success) {
        log.info("COEM-nf finished: results in ${params.outdir} (report: ${params.outdir}/multiqc/multiqc_report.html)")
    } else {
        log.error("COEM-nf failed: see the error above; nothing of the failed sample past its last finished step is published")
    }
}

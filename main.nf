#!/usr/bin/env nextflow
/*
 * COEM-nf: metacells for paired single-cell multiome data (RNA + ATAC) with the COEM method.
 * Docs: README.md, docs/usage.md, docs/output.md.
 */

include { COEM               } from './workflows/coem'
include { initialisePipeline; runSummaryLines } from './subworkflows/local/utils_coem_pipeline'

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

// A task asked for more CPUs or memory than this machine has (possible only when --max_cpus /
// --max_memory are set above it, or the executor is local under a cluster profile): say which
// parameter fixes it, with this machine's numbers.
workflow.onError {
    def message = "${workflow.errorMessage ?: ''} ${workflow.errorReport ?: ''}"
    def cpus = Runtime.runtime.availableProcessors()
    def memory = new nextflow.util.MemoryUnit(java.lang.management.ManagementFactory.operatingSystemMXBean.totalMemorySize)
    if (message.contains('exceeds available CPUs')) {
        log.error("A task asked for more CPUs than this machine has (${cpus}): run with --max_cpus ${cpus} or less " +
                  "(or leave --max_cpus unset: on the local executor it defaults to this machine's CPUs).")
    }
    if (message.contains('exceeds available memory')) {
        log.error("A task asked for more memory than this machine has (${memory}): run with --max_memory " +
                  "${memory.toGiga()}.GB or less (or leave --max_memory unset: on the local executor it defaults to this machine's memory).")
    }
}

// One block at the end: every sample's fate (ok / failed at STEP: error) and every warning, from
// pipeline_info/run_summary.tsv. A failed sample makes the run exit 1 (RUN_STATUS, the last step).
workflow.onComplete {
    def summary = file("${params.outdir}/pipeline_info/run_summary.tsv")
    def lines = []
    try {
        // this run's file only (a failure before it was written leaves an older one in --outdir)
        if (summary.exists() && summary.lastModified() >= workflow.start.toInstant().toEpochMilli() - 2000) {
            lines = runSummaryLines(summary.text)
        }
    } catch (Exception e) {
        log.warn("Could not read ${summary}: ${e.message}")
    }
    def failed = lines.count { it.contains(': failed at ') }
    def block = ['', '=' * 72, "COEM-nf run summary (${params.outdir}/pipeline_info/run_summary.tsv)"] + lines + ['=' * 72]
    if (workflow.success) {
        log.info((block + ["COEM-nf finished: results in ${params.outdir} (report: ${params.outdir}/multiqc/multiqc_report.html)"]).join('\n'))
    } else if (failed) {
        log.error((block + ["COEM-nf finished with ${failed} failed sample(s) (exit status 1): the other samples' results " +
                            "are in ${params.outdir} (report: ${params.outdir}/multiqc/multiqc_report.html); " +
                            "fix the failed samples' input and rerun with -resume"]).join('\n'))
    } else {
        if (lines) { log.error(block.join('\n')) }
        log.error("COEM-nf failed: see the error above; nothing of the failed sample past its last finished step is published")
    }
}

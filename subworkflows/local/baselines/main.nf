/*
 * Optional SEACells baselines (params.run_baselines): SeaC-RNA, SeaC-ATAC and archetypal analysis
 * on COEM's z, scored next to COEM's metacells (bin/coem_baselines.py, coem/baselines.py).
 */

include { BASELINES } from '../../../modules/local/baselines'

workflow BASELINES_COMPARISON {
    take:
    cells // [ meta, P.qc.h5mu, P.embedding.h5ad, P.metacells.h5ad ]: counts, COEM's z, COEM's metacells

    main:
    BASELINES(cells)

    emit:
    comparison = BASELINES.out.comparison // [ meta, P.method_comparison.tsv ]
    runtime    = BASELINES.out.runtime    // [ meta, P.runtime.tsv ]
    mqc        = BASELINES.out.mqc        // *_mqc.json for MultiQC
    failed     = BASELINES.out.failed     // [ meta, coem_failed.txt ]: bad input, this sample stops here
    warnings   = BASELINES.out.warnings   // [ meta, coem_warnings.txt ]
    versions   = BASELINES.out.versions
}

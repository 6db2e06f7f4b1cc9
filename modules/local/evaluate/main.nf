process EVALUATE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(h5mu), path(metacells), path(dubious)  // QC counts, P.metacells.h5ad, AGGREGATE's P.dubious.tsv (or [])

    output:
    tuple val(meta), path("${prefix}.evaluation.tsv")           , optional: true, emit: table
    path "${prefix}.evaluation_summary.json"                    , optional: true, emit: summary
    path "${prefix}.diffusion.npz"                              , optional: true, emit: diffusion
    path "*_mqc.json"                                           , optional: true, emit: mqc
    tuple val(meta), path("coem_failed.txt")                    , optional: true, emit: failed
    tuple val(meta), path("coem_warnings.txt")                  , optional: true, emit: warnings
    path "versions.yml"                                         , optional: true, emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    def dubious_table = dubious ? "--dubious-table ${CoemShell.quote(dubious)}" : ''
    // Per-sample failure isolation: a bad-input error writes coem_failed.txt and exits 0 with no
    // other output (coem/cli/_common.py), so this sample stops here and the others go on.
    """
    export COEM_FAILURE_FILE=coem_failed.txt
    export COEM_WARNINGS_FILE=coem_warnings.txt
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    export COEM_PACKAGE_DIGEST=${task.ext.coem_digest ?: 'unset'}
    export OMP_NUM_THREADS=${task.cpus}
    coem_evaluate.py \\
        --sample ${meta.id} \\
        --input ${CoemShell.quote(h5mu)} \\
        --metacells ${CoemShell.quote(metacells)} \\
        ${dubious_table} \\
        --prefix ${prefix} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.evaluation.tsv ${prefix}.evaluation_summary.json ${prefix}.diffusion.npz ${prefix}_evaluation_mqc.json
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        coem: ${workflow.manifest.version}
    END_VERSIONS
    """
}

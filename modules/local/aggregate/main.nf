process AGGREGATE {
    tag "${meta.id}"
    label 'process_low'  // the dubious-metacell test runs on task.cpus threads

    input:
    tuple val(meta), path(h5mu), path(metacells)  // QC counts, the metacell step's P.metacells.h5ad

    output:
    tuple val(meta), path("${prefix}.aggregated.h5mu")          , optional: true, emit: h5mu
    tuple val(meta), path("${prefix}.dubious.tsv")              , optional: true, emit: dubious
    tuple val(meta), path("coem_failed.txt")                    , optional: true, emit: failed
    tuple val(meta), path("coem_warnings.txt")                  , optional: true, emit: warnings
    path "versions.yml"                                         , optional: true, emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    // Per-sample failure isolation: a bad-input error writes coem_failed.txt and exits 0 with no
    // other output (coem/cli/_common.py), so this sample stops here and the others go on.
    """
    export COEM_FAILURE_FILE=coem_failed.txt
    export COEM_WARNINGS_FILE=coem_warnings.txt
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    export COEM_PACKAGE_DIGEST=${task.ext.coem_digest ?: 'unset'}
    export OMP_NUM_THREADS=${task.cpus}
    coem_aggregate.py \\
        --sample ${meta.id} \\
        --input ${CoemShell.quote(h5mu)} \\
        --metacells ${CoemShell.quote(metacells)} \\
        --prefix ${prefix} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.aggregated.h5mu ${prefix}.dubious.tsv
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        coem: ${workflow.manifest.version}
    END_VERSIONS
    """
}

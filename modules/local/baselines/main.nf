process BASELINES {
    tag "${meta.id}"
    label 'process_medium'

    input:
    tuple val(meta), path(h5mu), path(embedding), path(metacells)  // QC counts, z, COEM's metacells

    output:
    tuple val(meta), path("${prefix}.method_comparison.tsv")    , optional: true, emit: comparison
    tuple val(meta), path("${prefix}.runtime.tsv")              , optional: true, emit: runtime
    path "${prefix}.baseline_assignments.tsv"                   , optional: true, emit: assignments
    path "${prefix}.method_comparison.json"                     , optional: true, emit: json
    path "*_mqc.json"                                           , optional: true, emit: mqc
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
    export NUMBA_NUM_THREADS=${task.cpus}
    coem_baselines.py \\
        --sample ${meta.id} \\
        --input ${CoemShell.quote(h5mu)} \\
        --embedding ${CoemShell.quote(embedding)} \\
        --metacells ${CoemShell.quote(metacells)} \\
        --prefix ${prefix} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.method_comparison.tsv ${prefix}.runtime.tsv ${prefix}.baseline_assignments.tsv ${prefix}.method_comparison.json
    touch ${prefix}_method_comparison_mqc.json ${prefix}_runtime_comparison_mqc.json
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        coem: ${workflow.manifest.version}
    END_VERSIONS
    """
}

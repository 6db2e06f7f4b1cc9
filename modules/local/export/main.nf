/*
 * The published cell-level MuData, assembled once at the end (issue 14): a file copy of the QC
 * output plus the embedding and the metacell of every cell. The only step after QC that writes
 * the counts again; every other step passes on only what it adds.
 */
process EXPORT {
    tag "${meta.id}"
    label 'process_single'

    input:
    tuple val(meta), path(h5mu), path(embedding), path(metacells)  // QC counts, P.embedding.h5ad, P.metacells.h5ad

    output:
    tuple val(meta), path("${prefix}.metacells.h5mu")           , optional: true, emit: h5mu
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
    coem_export.py \\
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
    touch ${prefix}.metacells.h5mu
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        coem: ${workflow.manifest.version}
    END_VERSIONS
    """
}

process QC {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(h5), path(h5mu), path(rna, stageAs: 'rna/*'), path(atac, stageAs: 'atac/*'), path(labels), path(annotation)

    output:
    tuple val(meta), path("${prefix}.qc.h5mu")                  , optional: true, emit: h5mu
    path "${prefix}.qc_summary.json"                            , optional: true, emit: summary
    path "*_mqc.json"                                           , optional: true, emit: mqc
    tuple val(meta), path("coem_failed.txt")                    , optional: true, emit: failed
    tuple val(meta), path("coem_warnings.txt")                  , optional: true, emit: warnings
    path "versions.yml"                                         , optional: true, emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    def inputs = [
        h5         ? "--h5 ${CoemShell.quote(h5)}"                 : '',
        h5mu       ? "--h5mu ${CoemShell.quote(h5mu)}"             : '',
        rna        ? "--rna ${CoemShell.quote(rna)} --atac ${CoemShell.quote(atac)}" : '',
        labels     ? "--labels ${CoemShell.quote(labels)}"         : '',
        annotation ? "--annotation ${CoemShell.quote(annotation)}" : '',
    ].findAll().join(' ')
    // Per-sample failure isolation: a bad-input error writes coem_failed.txt and exits 0 with no
    // other output (coem/cli/_common.py), so this sample stops here and the others go on.
    """
    export COEM_FAILURE_FILE=coem_failed.txt
    export COEM_WARNINGS_FILE=coem_warnings.txt
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    export COEM_PACKAGE_DIGEST=${task.ext.coem_digest ?: 'unset'}
    export OMP_NUM_THREADS=${task.cpus}
    coem_qc.py \\
        --sample ${meta.id} \\
        ${inputs} \\
        --prefix ${prefix} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.qc.h5mu ${prefix}.qc_summary.json ${prefix}_qc_general_mqc.json
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        coem: ${workflow.manifest.version}
    END_VERSIONS
    """
}

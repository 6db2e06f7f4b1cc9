process QC {
    tag "${meta.id}"
    label 'process_low'
    container "${params.container_cpu}"

    input:
    tuple val(meta), path(h5), path(h5mu), path(rna, stageAs: 'rna/*'), path(atac, stageAs: 'atac/*'), path(labels), path(annotation)

    output:
    tuple val(meta), path("${prefix}.qc.h5mu")     , emit: h5mu
    path "${prefix}.qc_summary.json"                , emit: summary
    path "*_mqc.json"                               , emit: mqc
    path "versions.yml"                             , emit: versions

    script:
    def args   = task.ext.args ?: ''
    prefix     = task.ext.prefix ?: "${meta.id}"
    def inputs = [
        h5         ? "--h5 ${h5}"                 : '',
        h5mu       ? "--h5mu ${h5mu}"             : '',
        rna        ? "--rna ${rna} --atac ${atac}" : '',
        labels     ? "--labels ${labels}"         : '',
        annotation ? "--annotation ${annotation}" : '',
    ].findAll().join(' ')
    """
    export OMP_NUM_THREADS=${task.cpus}
    coem_qc.py \\
        --sample ${meta.id} \\
        ${inputs} \\
        --prefix ${prefix} \\
        --seed ${params.seed} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.qc.h5mu ${prefix}.qc_summary.json ${prefix}_qc_general_mqc.json versions.yml
    """
}

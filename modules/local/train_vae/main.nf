process TRAIN_VAE {
    tag "${meta.id}"
    label 'process_gpu'
    container "${params.use_gpu ? params.container_gpu : params.container_cpu}"

    input:
    tuple val(meta), path(h5mu)

    output:
    tuple val(meta), path("${prefix}.embed.h5mu"), emit: h5mu
    path "${prefix}.vae.pt"                      , emit: checkpoint
    path "${prefix}.vae_history.tsv"             , emit: history
    path "*_mqc.json"                            , emit: mqc
    path "versions.yml"                          , emit: versions

    script:
    def args   = task.ext.args ?: ''
    prefix     = task.ext.prefix ?: "${meta.id}"
    // The module only reads task.accelerator: a GPU when the config grants one, else the CPU.
    // The step itself also falls back to the CPU when CUDA is absent.
    def device = task.accelerator ? 'cuda' : 'cpu'
    """
    export OMP_NUM_THREADS=${task.cpus}
    coem_train_vae.py \\
        --sample ${meta.id} \\
        --input ${h5mu} \\
        --prefix ${prefix} \\
        --device ${device} \\
        --threads ${task.cpus} \\
        --seed ${params.seed} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.embed.h5mu ${prefix}.vae.pt ${prefix}.vae_history.tsv ${prefix}_vae_loss_mqc.json versions.yml
    """
}

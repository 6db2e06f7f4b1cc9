process PEAK2GENE {
    tag "${meta.id}"
    label 'process_low'

    input:
    tuple val(meta), path(aggregated), path(cells), path(known_links)  // cells (QC counts) / known_links: a file or []
    path fasta                                                         // genome FASTA for GC matching, or []

    output:
    tuple val(meta), path("${prefix}.peak2gene.tsv")            , optional: true, emit: links
    tuple val(meta), path("${prefix}.peak2gene_significant.tsv"), optional: true, emit: significant
    tuple val(meta), path("${prefix}.peak2gene_significant.bedpe"), optional: true, emit: bedpe
    path "${prefix}.peak2gene_summary.json"                     , optional: true, emit: summary
    path "*_mqc.json"                                           , optional: true, emit: mqc
    tuple val(meta), path("coem_failed.txt")                    , optional: true, emit: failed
    tuple val(meta), path("coem_warnings.txt")                  , optional: true, emit: warnings
    path "versions.yml"                                         , optional: true, emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    prefix   = task.ext.prefix ?: "${meta.id}"
    def sc    = cells ? "--cells ${CoemShell.quote(cells)}" : ''
    def known = known_links ? "--known-links ${CoemShell.quote(known_links)}" : ''
    def gc    = fasta ? "--fasta ${CoemShell.quote(fasta)}" : ''
    // Per-sample failure isolation: a bad-input error writes coem_failed.txt and exits 0 with no
    // other output (coem/cli/_common.py), so this sample stops here and the others go on.
    """
    export COEM_FAILURE_FILE=coem_failed.txt
    export COEM_WARNINGS_FILE=coem_warnings.txt
    export COEM_PIPELINE_VERSION=${workflow.manifest.version}
    export COEM_PACKAGE_DIGEST=${task.ext.coem_digest ?: 'unset'}
    export OMP_NUM_THREADS=${task.cpus}
    coem_peak2gene.py \\
        --sample ${meta.id} \\
        --input ${CoemShell.quote(aggregated)} \\
        ${sc} \\
        ${known} \\
        ${gc} \\
        --prefix ${prefix} \\
        --process-name ${task.process} \\
        ${args}
    """

    stub:
    prefix = task.ext.prefix ?: "${meta.id}"
    """
    touch ${prefix}.peak2gene.tsv ${prefix}.peak2gene_significant.tsv ${prefix}.peak2gene_significant.bedpe
    touch ${prefix}.peak2gene_summary.json ${prefix}_peak2gene_summary_mqc.json
    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        coem: ${workflow.manifest.version}
    END_VERSIONS
    """
}

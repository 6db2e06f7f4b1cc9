process SAMPLESHEET_CHECK {
    tag "${samplesheet.name}"
    label 'process_single'
    container "${params.container_cpu}"

    input:
    path samplesheet
    val  base_dir      // relative paths in the samplesheet are resolved against its own folder

    output:
    path 'samplesheet.valid.csv', emit: csv
    path 'versions.yml'         , emit: versions

    script:
    // Inside a container the user's files are not mounted: existence is then checked by
    // the workflow (subworkflows/local/input_check) when it stages them.
    def check_files = workflow.containerEngine ? '--no-check-files' : ''
    """
    coem_samplesheet_check.py \\
        --input ${samplesheet} \\
        --base-dir ${base_dir} \\
        --output samplesheet.valid.csv \\
        ${check_files} \\
        --process-name ${task.process}
    """

    stub:
    // The check is cheap and later steps need its normalised paths: run it in stub mode too.
    """
    coem_samplesheet_check.py \\
        --input ${samplesheet} \\
        --base-dir ${base_dir} \\
        --output samplesheet.valid.csv \\
        --no-check-files \\
        --process-name ${task.process}
    """
}

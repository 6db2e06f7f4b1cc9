/*
 * The run's verdict, after the report: exits 1 when a sample failed (per-sample failure isolation
 * lets the other samples finish and publish first), so the pipeline's exit status is non-zero.
 * The summary lists every sample's fate and every warning (written by the COEM workflow).
 */
process RUN_STATUS {
    label 'process_single'

    input:
    path summary        // run_summary.tsv: sample, status, step, message
    val  report_ready   // the MultiQC report (or []): this runs after it

    output:
    path "run_status.txt", emit: status

    when:
    task.ext.when == null || task.ext.when

    script:
    """
    awk -F '\\t' 'NR > 1 && \$2 == "failed" { n++; print "  " \$1 ": failed at " \$3 ": " \$4 }
                 END { exit n > 0 }' ${summary} > run_status.txt || {
        echo "ERROR: \$(wc -l < run_status.txt) sample(s) failed; the others are published:" >&2
        cat run_status.txt >&2
        exit 1
    }
    echo "all samples finished" >> run_status.txt
    """

    stub:
    """
    echo "all samples finished" > run_status.txt
    """
}

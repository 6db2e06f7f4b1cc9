/*
 * The COEM DAG, per sample in parallel:
 *   QC -> EMBED (pca_lsi) or TRAIN_VAE (vae) -> METACELLS -> AGGREGATE -> PEAK2GENE
 *                                                        \-> EVALUATE
 *                                                        \-> BASELINES (--run_baselines: SEACells)
 *                                                        \-> EXPORT (the published cell-level MuData)
 * then one MULTIQC report over all samples, and RUN_STATUS (the run's exit status).
 *
 * Lean data flow (issue 14): QC writes the counts once (P.qc.h5mu). The embedding and metacell
 * steps write only what they add (P.embedding.h5ad, P.metacells.h5ad: per-cell, no counts); the
 * steps that need counts join P.qc.h5mu with those by sample id, and EXPORT assembles the
 * published P.metacells.h5mu once, at the end.
 *
 * Per-sample failure isolation: a step that meets bad input in one sample emits a failure record
 * (coem_failed.txt) instead of its outputs, so that sample stops there and the others run to the
 * end and publish. Failures and warnings of every step are gathered into
 * pipeline_info/run_summary.tsv and the report's "Warnings and failed samples" section; RUN_STATUS
 * then fails the run (exit status 1) when a sample failed. Resource errors retry (base.config).
 */

include { INPUT_CHECK  } from '../subworkflows/local/input_check'
include { QC           } from '../modules/local/qc'
include { EMBED        } from '../modules/local/embed'
include { TRAIN_VAE    } from '../modules/local/train_vae'
include { METACELLS    } from '../modules/local/metacells'
include { AGGREGATE    } from '../modules/local/aggregate'
include { PEAK2GENE    } from '../modules/local/peak2gene'
include { EVALUATE     } from '../modules/local/evaluate'
include { EXPORT       } from '../modules/local/export'
include { MULTIQC      } from '../modules/local/multiqc'
include { RUN_STATUS   } from '../modules/local/run_status'
include { BASELINES_COMPARISON } from '../subworkflows/local/baselines'
include { softwareVersionsToYAML; paramsSummaryMultiqc; runSummaryTable; runSummaryMultiqc } from '../subworkflows/local/utils_coem_pipeline'

workflow COEM {
    take:
    samplesheet // file

    main:
    ch_versions = Channel.empty()
    ch_mqc      = Channel.empty()
    ch_failed   = Channel.empty()   // [ sample, step, error line ] per failed sample
    ch_warnings = Channel.empty()   // warning lines: sample <TAB> step <TAB> message
    // Read the records' text here (every task names them alike: never stage them together).
    def failures = { ch, step -> ch.map { meta, f -> [meta.id, step, f.text.trim().readLines().join(' ')] } }
    def warnings = { ch -> ch.flatMap { meta, f -> f.text.readLines().findAll { it.trim() } } }

    INPUT_CHECK(samplesheet)
    ch_versions = ch_versions.mix(INPUT_CHECK.out.versions)

    QC(INPUT_CHECK.out.samples)
    ch_versions = ch_versions.mix(QC.out.versions)
    ch_failed   = ch_failed.mix(failures(QC.out.failed, 'QC'))
    ch_warnings = ch_warnings.mix(warnings(QC.out.warnings))
    ch_mqc      = ch_mqc.mix(QC.out.mqc)

    if (params.embedding == 'vae') {
        TRAIN_VAE(QC.out.h5mu)
        ch_embedded = TRAIN_VAE.out.embedding
        ch_versions = ch_versions.mix(TRAIN_VAE.out.versions)
        ch_failed   = ch_failed.mix(failures(TRAIN_VAE.out.failed, 'TRAIN_VAE'))
        ch_warnings = ch_warnings.mix(warnings(TRAIN_VAE.out.warnings))
        ch_mqc      = ch_mqc.mix(TRAIN_VAE.out.mqc)
    } else {
        EMBED(QC.out.h5mu)
        ch_embedded = EMBED.out.embedding
        ch_versions = ch_versions.mix(EMBED.out.versions)
        ch_failed   = ch_failed.mix(failures(EMBED.out.failed, 'EMBED'))
        ch_warnings = ch_warnings.mix(warnings(EMBED.out.warnings))
    }

    METACELLS(ch_embedded)
    ch_versions = ch_versions.mix(METACELLS.out.versions)
    ch_failed   = ch_failed.mix(failures(METACELLS.out.failed, 'METACELLS'))
    ch_warnings = ch_warnings.mix(warnings(METACELLS.out.warnings))
    ch_mqc      = ch_mqc.mix(METACELLS.out.mqc)

    // Join by sample id: meta gains fields along the way (e.g. QC), the id stays.
    def byId = { ch -> ch.map { row -> [row[0].id] + row } }
    def joinById = { left, right -> byId(left).join(byId(right).map { row -> [row[0]] + row[2..-1] }).map { row -> row[1..-1] } }
    ch_counts_metacells = joinById(QC.out.h5mu, METACELLS.out.cells)   // [ meta, P.qc.h5mu, P.metacells.h5ad ]

    AGGREGATE(ch_counts_metacells)
    ch_versions = ch_versions.mix(AGGREGATE.out.versions)
    ch_failed   = ch_failed.mix(failures(AGGREGATE.out.failed, 'AGGREGATE'))
    ch_warnings = ch_warnings.mix(warnings(AGGREGATE.out.warnings))

    ch_p2g_input = params.p2g_single_cell
        ? joinById(AGGREGATE.out.h5mu, QC.out.h5mu)
        : AGGREGATE.out.h5mu.map { meta, agg -> [meta, agg, []] }
    // join by sample id: meta gains fields along the way (e.g. QC), the id stays
    ch_known_links = INPUT_CHECK.out.known_links.map { meta, links -> [meta.id, links] }
    ch_p2g_input = ch_p2g_input
        .map { row -> [row[0].id] + row }
        .join(ch_known_links)
        .map { row -> row[1..-1] }
    ch_fasta = params.fasta ? Channel.value(file(params.fasta, checkIfExists: true)) : Channel.value([])
    PEAK2GENE(ch_p2g_input, ch_fasta)
    ch_versions = ch_versions.mix(PEAK2GENE.out.versions)
    ch_failed   = ch_failed.mix(failures(PEAK2GENE.out.failed, 'PEAK2GENE'))
    ch_warnings = ch_warnings.mix(warnings(PEAK2GENE.out.warnings))
    ch_mqc      = ch_mqc.mix(PEAK2GENE.out.mqc)

    if (!params.skip_evaluation) {
        // AGGREGATE's dubious-metacell table: the test runs once per sample, not again here
        EVALUATE(joinById(ch_counts_metacells, AGGREGATE.out.dubious))
        ch_versions = ch_versions.mix(EVALUATE.out.versions)
        ch_failed   = ch_failed.mix(failures(EVALUATE.out.failed, 'EVALUATE'))
        ch_warnings = ch_warnings.mix(warnings(EVALUATE.out.warnings))
        ch_mqc      = ch_mqc.mix(EVALUATE.out.mqc)
    }

    // The published cell-level MuData: counts, QC metrics, labels, z and metacells in one file.
    EXPORT(joinById(joinById(QC.out.h5mu, ch_embedded), METACELLS.out.cells))
    ch_versions = ch_versions.mix(EXPORT.out.versions)
    ch_failed   = ch_failed.mix(failures(EXPORT.out.failed, 'EXPORT'))
    ch_warnings = ch_warnings.mix(warnings(EXPORT.out.warnings))

    // SEACells baselines on the same cells, scored the same way (Table-2-style comparison).
    if (params.run_baselines) {
        BASELINES_COMPARISON(joinById(joinById(QC.out.h5mu, ch_embedded), METACELLS.out.cells))
        ch_versions = ch_versions.mix(BASELINES_COMPARISON.out.versions)
        ch_failed   = ch_failed.mix(failures(BASELINES_COMPARISON.out.failed, 'BASELINES'))
        ch_warnings = ch_warnings.mix(warnings(BASELINES_COMPARISON.out.warnings))
        ch_mqc      = ch_mqc.mix(BASELINES_COMPARISON.out.mqc)
    }

    // Every sample's fate and every warning: pipeline_info/run_summary.tsv and a report section.
    ch_sample_ids = INPUT_CHECK.out.samples.map { meta, h5, h5mu, rna, atac, labels, annotation -> meta.id }
    ch_summary_text = ch_sample_ids.toList().map { [it] }
        .combine(ch_failed.toList().map { [it] })
        .combine(ch_warnings.toList().map { [it] })
        .map { ids, failed, warned -> runSummaryTable(ids, failed, warned) }
    // Written on every run, -resume included (storeDir would keep an older file): main.nf's
    // onComplete prints it.
    ch_summary = ch_summary_text
        .collectFile(name: 'run_summary.tsv')
        .map { f ->
            def dest = file("${params.outdir}/pipeline_info/run_summary.tsv")
            dest.parent.mkdirs()
            f.copyTo(dest)
            f
        }
    ch_mqc = ch_mqc.mix(ch_summary_text.map { runSummaryMultiqc(it) }.collectFile(name: 'coem_run_summary_mqc.yaml'))

    // Report: every step's custom content, software versions and the parameter summary.
    ch_versions_yaml = softwareVersionsToYAML(ch_versions)
        .collectFile(storeDir: "${params.outdir}/pipeline_info", name: 'coem_software_mqc_versions.yml', sort: true, newLine: true)
    ch_params_yaml = Channel.value(paramsSummaryMultiqc())
        .collectFile(name: 'coem_params_summary_mqc.yaml')
    MULTIQC(
        ch_mqc.mix(ch_versions_yaml, ch_params_yaml).collect(),
        file(params.multiqc_config, checkIfExists: true),
    )

    // Last: exit status 1 when a sample failed, once everything else has finished.
    RUN_STATUS(ch_summary, MULTIQC.out.report.map { it.name })

    emit:
    multiqc_report = MULTIQC.out.report
    versions       = ch_versions
}

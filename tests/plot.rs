//! `simclr plot`: charts from a synthetic run directory, and one-line errors for bad input.

mod common;

use common::Tmp;
use serde_json::json;
use simclr::train::plot::plot;
use std::path::Path;

/// Writes `<dir>/metrics.jsonl` as the trainer does: a record per step, one per epoch.
/// `measured` is the epoch records' extra field ("knn_top1" or "top1"), if any.
fn write_stage(dir: &Path, stage: &str, epochs: usize, steps: usize, measured: Option<&str>) {
    std::fs::create_dir_all(dir).unwrap();
    let mut text = String::new();
    let mut step = 0;
    for epoch in 1..=epochs {
        for _ in 0..steps {
            let loss = 5.0 / (1.0 + step as f64);
            let lr = 0.1 * (1.0 - step as f64 / (epochs * steps) as f64);
            text += &json!({"stage": stage, "epoch": epoch, "step": step, "loss": loss,
                "lr": lr, "images_per_s": 1000.0})
            .to_string();
            text += "\n";
            step += 1;
        }
        let mut record =
            json!({"stage": stage, "epoch": epoch, "mean_loss": 1.0, "elapsed_s": 2.0});
        if let Some(key) = measured {
            record[key] = json!(0.5 + 0.1 * epoch as f64);
        }
        text += &record.to_string();
        text += "\n";
    }
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

fn error(run: &Path) -> String {
    match plot(run) {
        Ok(files) => panic!("expected an error, wrote {files:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn pipeline_run_gives_png_and_svg_charts() {
    let tmp = Tmp::new("pipeline");
    let run = &tmp.0;
    write_stage(&run.join("pretrain"), "pretrain", 3, 20, Some("knn_top1"));
    write_stage(&run.join("finetune"), "finetune", 2, 5, Some("top1"));
    write_stage(&run.join("distill"), "distill", 2, 8, Some("top1"));
    // A long stage: its 3000 steps are drawn as means over windows of 3.
    write_stage(&run.join("baseline"), "baseline", 1, 3000, None);
    std::fs::write(run.join("report.json"), "{}").unwrap();

    let files = plot(run).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.strip_prefix(run).unwrap().display().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "plots/loss.png",
            "plots/loss.svg",
            "plots/lr.png",
            "plots/lr.svg",
            "plots/knn_top1.png",
            "plots/knn_top1.svg",
            "plots/top1.png",
            "plots/top1.svg",
        ]
    );
    for file in &files {
        let bytes = std::fs::read(file).unwrap();
        if file.extension().unwrap() == "png" {
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "{}",
                file.display()
            );
            let img = image::load_from_memory(&bytes).unwrap().to_rgb8();
            assert_eq!(img.dimensions(), (900, 540));
            // Not a blank canvas: axes, text and curves leave non-white pixels.
            let inked = img.pixels().filter(|p| p.0 != [255, 255, 255]).count();
            assert!(
                inked > 1000,
                "{}: only {inked} non-white pixels",
                file.display()
            );
        } else {
            let svg = String::from_utf8(bytes).unwrap();
            assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
            assert!(svg.contains("<polyline"), "{}: no curve", file.display());
        }
    }
    // Every stage is in the loss chart's legend; the long one's title says it was averaged.
    let loss = std::fs::read_to_string(run.join("plots/loss.svg")).unwrap();
    for stage in ["pretrain", "finetune", "distill", "baseline"] {
        assert!(loss.contains(stage), "{stage} missing from the loss legend");
    }
    assert!(loss.contains("mean over 3 steps"));
}

#[test]
fn single_stage_run_with_metrics_at_its_root() {
    let tmp = Tmp::new("single");
    write_stage(&tmp.0, "finetune", 2, 4, Some("top1"));
    // Killed in epoch 2 and resumed from the checkpoint of epoch 1: steps 4 and 5 are logged
    // twice, and the second time counts.
    let file = tmp.0.join("metrics.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    std::fs::write(&file, [&lines[..7], &lines[5..]].concat().join("\n")).unwrap();

    let files = plot(&tmp.0).unwrap();
    // No kNN values in a fine-tuning run: no kNN chart.
    assert_eq!(files.len(), 6);
    assert!(files.iter().all(|f| !f.ends_with("knn_top1.png")));
    // The loss curve (the longest line drawn 2 px wide) has one point per step.
    let svg = std::fs::read_to_string(tmp.0.join("plots/loss.svg")).unwrap();
    let points = svg
        .lines()
        .filter(|l| l.contains("<polyline") && l.contains("stroke-width=\"2\""))
        .map(|l| {
            let points = l.split("points=\"").nth(1).unwrap();
            points.split('"').next().unwrap().split_whitespace().count()
        })
        .max();
    assert_eq!(points, Some(8));
}

#[test]
fn bad_input_is_a_one_line_error() {
    let tmp = Tmp::new("bad");
    let run = &tmp.0;

    let missing = run.join("nope");
    let e = error(&missing);
    assert!(e.contains("nope") && e.contains("not a directory"), "{e}");

    let e = error(run);
    assert!(e.contains("no metrics.jsonl"), "{e}");

    // A run killed mid-write: the last line is cut short.
    write_stage(&run.join("pretrain"), "pretrain", 1, 3, None);
    let file = run.join("pretrain/metrics.jsonl");
    let mut text = std::fs::read_to_string(&file).unwrap();
    text += "{\"stage\":\"pretrain\",\"epoch\":2,\"st";
    std::fs::write(&file, &text).unwrap();
    let e = error(run);
    assert!(
        e.contains("pretrain/metrics.jsonl:5: not valid JSON"),
        "{e}"
    );

    for (line, why) in [
        ("[1, 2]", ":1: not a JSON object"),
        (
            r#"{"stage":"pretrain","step":0,"loss":"high","lr":0.1}"#,
            ":1: \"loss\" is \"high\", not a number",
        ),
        (
            r#"{"stage":"pretrain","step":0,"loss":-1e308,"lr":0.1}"#,
            ":1: \"loss\" is -1e+308, too large to plot",
        ),
        (
            r#"{"stage":"pretrain","loss":1.0}"#,
            ":1: \"loss\" without a \"step\"",
        ),
        (r#"{"step":0,"loss":1.0,"lr":0.1}"#, ":1: no \"stage\" name"),
        ("\u{0}\u{ff}", ":1: not valid JSON"),
    ] {
        std::fs::write(&file, line).unwrap();
        let e = error(run);
        assert!(e.contains(&format!("metrics.jsonl{why}")), "{line}: {e}");
        assert!(!e.contains('\n'), "{e}");
    }

    std::fs::write(&file, "\n\n").unwrap();
    let e = error(run);
    assert!(e.contains("no step or epoch records"), "{e}");
    assert!(
        !run.join("plots").exists(),
        "nothing is written for bad input"
    );
}

//! Which training labels the semi-supervised stages may use: the `--labels` flag (a count
//! per class or a fraction, class-balanced and seeded) or `--labels-file` (the images named
//! in a file, as the official 1% and 10% ImageNet subsets).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use super::{read_file, Dataset, UNLABELLED};
use crate::error::{Error, Result};
use crate::rng::Rng;

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LabelSpec {
    /// This many labelled images of every class.
    PerClass(usize),
    /// This fraction (in (0, 1]) of every class.
    Fraction(f64),
    All,
}

impl FromStr for LabelSpec {
    type Err = Error;

    /// "10" is 10 per class (an integer is always a count, so "1" is one per class),
    /// "1%" or "0.01" is a fraction, "all" is every label.
    fn from_str(s: &str) -> Result<LabelSpec> {
        let bad = |why: &str| Error::Config(format!("--labels {s}: {why}"));
        let t = s.trim();
        if t.eq_ignore_ascii_case("all") {
            return Ok(LabelSpec::All);
        }
        if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            let k: usize = t.parse().map_err(|_| bad("count per class is too large"))?;
            if k == 0 {
                return Err(bad("need at least one label per class"));
            }
            return Ok(LabelSpec::PerClass(k));
        }
        let (number, scale) = match t.strip_suffix('%') {
            Some(p) => (p, 0.01),
            None => (t, 1.0),
        };
        let frac = number.trim().parse::<f64>().map_err(|_| {
            bad("expected a count per class (e.g. 10), a fraction (e.g. 1% or 0.01) or 'all'")
        })? * scale;
        if !frac.is_finite() || frac <= 0.0 || frac > 1.0 {
            return Err(bad(
                "the fraction must be in (0, 1], i.e. above 0% and at most 100%",
            ));
        }
        Ok(LabelSpec::Fraction(frac))
    }
}

impl fmt::Display for LabelSpec {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            LabelSpec::PerClass(k) => write!(f, "{k} per class"),
            // Rounded so that e.g. 0.07 prints as 7%, not 7.000000000000001%.
            LabelSpec::Fraction(frac) => write!(f, "{}%", (frac * 1e6).round() / 1e4),
            LabelSpec::All => write!(f, "all"),
        }
    }
}

impl LabelSpec {
    /// The label fraction to report: the nominal one when a fraction was asked for (rounding
    /// per class makes the actual one differ slightly), else the actual one.
    pub fn fraction_of(&self, n_total: usize, n_selected: usize) -> f64 {
        match self {
            LabelSpec::Fraction(frac) => *frac,
            LabelSpec::All => 1.0,
            LabelSpec::PerClass(_) => n_selected as f64 / n_total.max(1) as f64,
        }
    }
}

/// The labelled subset of the training images `in_use` (indices into `train`, sorted): the
/// images named in `labels_file` when there is one, else a `spec` subset chosen with `seed`.
/// Unlabelled images are never chosen.
pub fn labelled(
    train: &Dataset,
    in_use: &[usize],
    spec: &LabelSpec,
    labels_file: Option<&Path>,
    seed: u64,
) -> Result<Vec<usize>> {
    if let Some(file) = labels_file {
        return from_file(file, train, in_use);
    }
    let labels: Vec<u32> = in_use.iter().map(|&i| train.labels[i]).collect();
    let chosen = select(&labels, train.num_classes, spec, seed)?;
    Ok(chosen.into_iter().map(|i| in_use[i]).collect())
}

/// The images of `in_use` named in a labels file (indices into `train`, sorted): one file
/// name per line, matched against the images' file names (a line may carry folders, as in
/// "n01440764/n01440764_10026.JPEG"; only its last component counts). Blank lines are
/// skipped; a name that matches no image, or two, is an error.
pub fn from_file(file: &Path, train: &Dataset, in_use: &[usize]) -> Result<Vec<usize>> {
    let bad = |why: String| Error::Config(format!("--labels-file {}: {why}", file.display()));
    if train.paths.is_empty() {
        return Err(bad(
            "the training images have no file names (only image folders do); use --labels".into(),
        ));
    }
    let bytes = read_file(file, 64 << 20, "a labels file")?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad("not UTF-8 text".into()))?;
    // File name -> image, or None when two images share the name.
    let mut by_name: HashMap<&OsStr, Option<usize>> = HashMap::new();
    for &i in in_use {
        if let Some(name) = train.paths[i].file_name() {
            by_name
                .entry(name)
                .and_modify(|e| *e = None)
                .or_insert(Some(i));
        }
    }
    let mut chosen = Vec::new();
    for (line_no, line) in text.lines().enumerate() {
        let line = line.trim();
        let Some(name) = Path::new(line).file_name() else {
            continue;
        };
        let at = |why: &str| bad(format!("line {}: {line} {why}", line_no + 1));
        match by_name.get(name) {
            None => return Err(at("is not among the training images in use")),
            Some(None) => return Err(at("names several training images")),
            Some(Some(i)) if train.labels[*i] == UNLABELLED => {
                return Err(at("is an unlabelled image"))
            }
            Some(Some(i)) => chosen.push(*i),
        }
    }
    if chosen.is_empty() {
        return Err(bad("names no images".into()));
    }
    chosen.sort_unstable();
    chosen.dedup();
    Ok(chosen)
}

/// Fewest validation images per class (on average) worth choosing a learning rate on.
pub const MIN_VALIDATION_PER_CLASS: usize = 5;

/// The validation split that chooses the pipeline's learning rates: up to `n` labelled images
/// of `in_use` outside the labelled subset `labelled` (indices into the training set whose
/// labels are `labels`; both sorted), chosen with the seed, sorted. It is never a test image,
/// and never one the supervised stages train on. Empty when fewer than
/// `MIN_VALIDATION_PER_CLASS` per class remain (e.g. `--labels all`): too few to choose on.
pub fn validation(
    labels: &[u32],
    num_classes: usize,
    in_use: &[usize],
    labelled: &[usize],
    n: usize,
    seed: u64,
) -> Vec<usize> {
    let mut pool: Vec<usize> = (in_use.iter().copied())
        .filter(|&i| labels[i] != UNLABELLED && labelled.binary_search(&i).is_err())
        .collect();
    Rng::derive(seed, &[0x7A11D]).shuffle(&mut pool);
    pool.truncate(n);
    if pool.len() < MIN_VALIDATION_PER_CLASS * num_classes {
        return Vec::new();
    }
    pool.sort_unstable();
    pool
}

/// Class-balanced indices into `labels`, chosen with the seed, sorted ascending; UNLABELLED
/// entries are never chosen. Fraction: per class round(frac * class_count), at least 1.
pub fn select(
    labels: &[u32],
    num_classes: usize,
    spec: &LabelSpec,
    seed: u64,
) -> Result<Vec<usize>> {
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); num_classes];
    for (i, &l) in labels.iter().enumerate() {
        if l == UNLABELLED {
            continue;
        }
        let class = by_class.get_mut(l as usize).ok_or_else(|| {
            Error::Data(format!(
                "label {l} of train image {i} is not below num_classes = {num_classes}"
            ))
        })?;
        class.push(i);
    }
    let mut chosen = Vec::new();
    for (class, mut idx) in by_class.into_iter().enumerate() {
        let k = match *spec {
            LabelSpec::All => idx.len(),
            LabelSpec::PerClass(k) => k,
            LabelSpec::Fraction(frac) => ((frac * idx.len() as f64).round() as usize).max(1),
        };
        if k > idx.len() {
            return Err(Error::Config(format!(
                "--labels {spec}: class {class} has only {} training images, {k} requested",
                idx.len()
            )));
        }
        // One stream per class, so the images picked for a class do not depend on the others.
        Rng::derive(seed, &[class as u64]).shuffle(&mut idx);
        chosen.extend_from_slice(&idx[..k]);
    }
    chosen.sort_unstable();
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<LabelSpec> {
        s.parse()
    }

    #[test]
    fn parses_flag_values() {
        assert_eq!(parse("10").unwrap(), LabelSpec::PerClass(10));
        assert_eq!(parse("1").unwrap(), LabelSpec::PerClass(1));
        assert_eq!(parse("1%").unwrap(), LabelSpec::Fraction(0.01));
        assert_eq!(parse("0.01").unwrap(), LabelSpec::Fraction(0.01));
        assert_eq!(parse("10%").unwrap(), LabelSpec::Fraction(0.1));
        assert_eq!(parse("1.0").unwrap(), LabelSpec::Fraction(1.0));
        assert_eq!(parse("100%").unwrap(), LabelSpec::Fraction(1.0));
        assert_eq!(parse("all").unwrap(), LabelSpec::All);
        assert_eq!(parse("ALL").unwrap(), LabelSpec::All);
        for bad in [
            "0", "0%", "0.0", "150%", "1.5", "-3", "-1%", "nan", "inf", "", "ten", "5%%",
        ] {
            let msg = parse(bad).err().unwrap().to_string();
            assert!(matches!(parse(bad), Err(Error::Config(_))));
            assert!(msg.starts_with(&format!("--labels {bad}: ")), "{msg}");
        }
    }

    /// The validation split: labelled images in use outside the labelled subset, the same
    /// for a seed, another for another seed, and none when too few remain.
    #[test]
    fn validation_split_is_disjoint_seeded_and_sorted() {
        let mut labels: Vec<u32> = (0..400).map(|i| i % 4).collect();
        labels[7] = UNLABELLED;
        let in_use: Vec<usize> = (0..400).filter(|i| i % 5 != 0).collect();
        let labelled = labelled_of(&labels, &in_use);
        let v = validation(&labels, 4, &in_use, &labelled, 100, 3);
        assert_eq!(v.len(), 100);
        assert!(v.windows(2).all(|w| w[0] < w[1]));
        for i in &v {
            assert!(in_use.contains(i) && !labelled.contains(i) && labels[*i] != UNLABELLED);
        }
        assert_eq!(v, validation(&labels, 4, &in_use, &labelled, 100, 3));
        assert_ne!(v, validation(&labels, 4, &in_use, &labelled, 100, 4));
        // All that remain (320 in use, 1 unlabelled, 20 labelled), or none when too few.
        assert_eq!(
            validation(&labels, 4, &in_use, &labelled, 1000, 3).len(),
            299
        );
        let all: Vec<usize> = (in_use.iter().copied())
            .filter(|&i| labels[i] != UNLABELLED)
            .collect();
        assert!(validation(&labels, 4, &in_use, &all, 1000, 3).is_empty());
        assert!(validation(&labels, 4, &in_use, &labelled, 19, 3).is_empty());
        assert_eq!(validation(&labels, 4, &in_use, &labelled, 20, 3).len(), 20);
    }

    /// Five labelled images per class of `in_use`, as `--labels 5` chooses them.
    fn labelled_of(labels: &[u32], in_use: &[usize]) -> Vec<usize> {
        let of_in_use: Vec<u32> = in_use.iter().map(|&i| labels[i]).collect();
        let chosen = select(&of_in_use, 4, &LabelSpec::PerClass(5), 3).unwrap();
        chosen.into_iter().map(|i| in_use[i]).collect()
    }

    #[test]
    fn selects_balanced_sorted_deterministic_subsets() {
        // 3 classes with 100, 50 and 10 images, interleaved.
        let labels: Vec<u32> = (0..160)
            .map(|i| {
                if i < 100 {
                    0
                } else if i < 150 {
                    1
                } else {
                    2
                }
            })
            .collect();
        let mut labels = labels;
        Rng::new(1).shuffle(&mut labels);
        let count = |idx: &[usize], c: u32| idx.iter().filter(|&&i| labels[i] == c).count();

        let a = select(&labels, 3, &LabelSpec::PerClass(5), 7).unwrap();
        assert_eq!(a.len(), 15);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        assert_eq!((count(&a, 0), count(&a, 1), count(&a, 2)), (5, 5, 5));
        assert_eq!(a, select(&labels, 3, &LabelSpec::PerClass(5), 7).unwrap());
        assert_ne!(a, select(&labels, 3, &LabelSpec::PerClass(5), 8).unwrap());

        let f = select(&labels, 3, &LabelSpec::Fraction(0.1), 7).unwrap();
        assert_eq!((count(&f, 0), count(&f, 1), count(&f, 2)), (10, 5, 1));
        let f = select(&labels, 3, &LabelSpec::Fraction(0.01), 7).unwrap();
        assert_eq!((count(&f, 0), count(&f, 1), count(&f, 2)), (1, 1, 1));
        assert_eq!(LabelSpec::Fraction(0.01).fraction_of(160, f.len()), 0.01);
        assert_eq!(LabelSpec::PerClass(5).fraction_of(160, 15), 15.0 / 160.0);

        let all: Vec<usize> = (0..160).collect();
        assert_eq!(select(&labels, 3, &LabelSpec::All, 7).unwrap(), all);
        assert_eq!(
            select(&labels, 3, &LabelSpec::Fraction(1.0), 7).unwrap(),
            all
        );

        let msg = select(&labels, 3, &LabelSpec::PerClass(11), 7)
            .err()
            .unwrap()
            .to_string();
        assert_eq!(
            msg,
            "--labels 11 per class: class 2 has only 10 training images, 11 requested"
        );
        assert!(matches!(
            select(&labels, 2, &LabelSpec::All, 7),
            Err(Error::Data(_))
        ));
    }
}

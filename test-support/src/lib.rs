//! What the tests of every crate in the workspace share: where the committed fixtures
//! (`tests/fixtures/` at the workspace root) are, and the max-abs distance the parity tests
//! compare outputs by. No dependencies, so any crate can take it as a dev-dependency.
#![warn(missing_docs)]

use std::path::{Path, PathBuf};

/// The committed fixtures folder.
///
/// Found from `$CARGO_MANIFEST_DIR` at run time when it is set (cargo sets it to the tested
/// crate's folder for `cargo test`; scripts/gpu-check.sh sets it for test binaries built on
/// another machine and carried to this one), else from where this crate was built: that folder
/// or the nearest one above it holding `tests/fixtures`. Panics when there is none, naming where
/// it looked (a test without its fixtures cannot run).
pub fn fixtures() -> PathBuf {
    let start = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    find_fixtures(&start).unwrap_or_else(|| {
        panic!(
            "no tests/fixtures in {} or a folder above it",
            start.display()
        )
    })
}

/// `fixtures()/path`.
pub fn fixture(path: impl AsRef<Path>) -> PathBuf {
    fixtures().join(path)
}

/// `start/tests/fixtures`, or the same under the nearest folder above `start` that has one.
fn find_fixtures(start: &Path) -> Option<PathBuf> {
    start
        .ancestors()
        .map(|dir| dir.join("tests").join("fixtures"))
        .find(|candidate| candidate.is_dir())
}

/// The largest absolute difference between two equally long outputs.
///
/// Equal values are no difference (infinities included); an infinity against anything else is
/// an infinite one. Panics when their lengths differ, or when either holds a NaN (a NaN would
/// otherwise compare as no difference at all).
pub fn max_abs(ours: &[f32], theirs: &[f32]) -> f32 {
    assert_eq!(ours.len(), theirs.len(), "outputs of different lengths");
    ours.iter()
        .zip(theirs)
        .map(|(a, b)| {
            assert!(!a.is_nan() && !b.is_nan(), "a NaN in the outputs");
            // Equal infinities (masked logits) are no difference.
            if a == b {
                0.0
            } else {
                (a - b).abs()
            }
        })
        .fold(0.0, f32::max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_fixtures_are_found_from_any_crate_folder() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let expected = root.join("tests/fixtures").canonicalize().unwrap();
        for dir in [".", "blip2-core", "tools/random-checkpoint"] {
            let found = find_fixtures(&root.join(dir)).unwrap();
            assert_eq!(found.canonicalize().unwrap(), expected, "from {dir}");
        }
        assert_eq!(find_fixtures(Path::new("/nonexistent/blip2")), None);
    }

    #[test]
    fn max_abs_is_the_largest_difference() {
        assert_eq!(max_abs(&[1.0, -2.0, 3.0], &[1.5, -2.0, 2.0]), 1.0);
        assert_eq!(max_abs(&[], &[]), 0.0);
        assert_eq!(max_abs(&[f32::NEG_INFINITY], &[f32::NEG_INFINITY]), 0.0);
        assert_eq!(max_abs(&[f32::NEG_INFINITY], &[0.0]), f32::INFINITY);
    }

    #[test]
    #[should_panic(expected = "NaN")]
    fn a_nan_is_not_a_match() {
        max_abs(&[f32::NAN], &[0.0]);
    }
}

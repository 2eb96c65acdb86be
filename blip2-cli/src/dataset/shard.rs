//! Which part of a dataset this process takes: `--shard I/N`, or the index a scheduler gives it
//! (Kubernetes Indexed Jobs, Slurm job arrays); and brace patterns naming many shard files.

use crate::AnyError;

/// This process's part of the work: the `index`-th of `count` (0-based).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Shard {
    /// 0-based index of this process.
    pub index: usize,
    /// How many processes share the dataset.
    pub count: usize,
}

impl Shard {
    /// The whole dataset.
    pub const ALL: Shard = Shard { index: 0, count: 1 };

    fn new(index: usize, count: usize, source: &str) -> Result<Self, AnyError> {
        if count == 0 || index >= count {
            return Err(format!(
                "{source} gives shard {index} of {count}: it needs 0 <= index < count"
            )
            .into());
        }
        Ok(Shard { index, count })
    }

    /// Whether the `k`-th item (of a list of files, or of rows) is this shard's.
    pub fn takes(&self, k: usize) -> bool {
        k % self.count == self.index
    }

    /// `00001-of-00004`, for file names; empty for the whole dataset.
    pub fn suffix(&self) -> String {
        if self.count == 1 {
            String::new()
        } else {
            format!("{:05}-of-{:05}", self.index, self.count)
        }
    }
}

/// Parses `--shard I/N`.
pub fn parse_shard(shard: &str) -> Result<Shard, AnyError> {
    let bad = || format!("--shard takes I/N with 0 <= I < N, found {shard:?}");
    let (i, n) = shard.split_once('/').ok_or_else(bad)?;
    let (i, n): (usize, usize) = (
        i.trim().parse().map_err(|_| bad())?,
        n.trim().parse().map_err(|_| bad())?,
    );
    if n == 0 || i >= n {
        return Err(bad().into());
    }
    Ok(Shard { index: i, count: n })
}

/// The shard this process takes, in this order of precedence: `--shard I/N`; then
/// `JOB_COMPLETION_INDEX` (a Kubernetes Indexed Job) with `--shards N`; then
/// `SLURM_ARRAY_TASK_ID` with `SLURM_ARRAY_TASK_COUNT` (a Slurm job array, counted from
/// `SLURM_ARRAY_TASK_MIN`); otherwise the whole dataset. `env` reads a variable.
pub fn resolve(
    flag: Option<&str>,
    shards: Option<usize>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Shard, AnyError> {
    if let Some(flag) = flag {
        if shards.is_some() {
            return Err("--shard I/N already says how many shards: not with --shards".into());
        }
        return parse_shard(flag);
    }
    let number = |name: &str| -> Result<Option<usize>, AnyError> {
        match env(name) {
            None => Ok(None),
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| format!("{name}={v:?} is not a shard number").into()),
        }
    };
    if let Some(index) = number("JOB_COMPLETION_INDEX")? {
        let count = shards.ok_or(
            "JOB_COMPLETION_INDEX is set (a Kubernetes Indexed Job): give --shards N, the Job's \
             completions",
        )?;
        return Shard::new(index, count, "JOB_COMPLETION_INDEX with --shards");
    }
    if let Some(id) = number("SLURM_ARRAY_TASK_ID")? {
        let count = match (shards, number("SLURM_ARRAY_TASK_COUNT")?) {
            (Some(n), _) | (None, Some(n)) => n,
            (None, None) => {
                return Err(
                    "SLURM_ARRAY_TASK_ID is set without SLURM_ARRAY_TASK_COUNT: give \
                            --shards N"
                        .into(),
                )
            }
        };
        let min = number("SLURM_ARRAY_TASK_MIN")?.unwrap_or(0);
        let index = id.checked_sub(min).ok_or_else(|| {
            format!("SLURM_ARRAY_TASK_ID {id} is below SLURM_ARRAY_TASK_MIN {min}")
        })?;
        return Shard::new(index, count, "SLURM_ARRAY_TASK_ID");
    }
    match shards {
        Some(_) => Err(
            "--shards N needs JOB_COMPLETION_INDEX or SLURM_ARRAY_TASK_ID in the \
                        environment (or use --shard I/N)"
                .into(),
        ),
        None => Ok(Shard::ALL),
    }
}

/// Expands brace patterns as clip-retrieval and webdataset do: `{00000..00150}` (a range; the
/// width of its first bound is kept, so zero padding survives) and `{a,b}` (a list), several
/// per pattern. A pattern without braces is itself.
pub fn expand_braces(pattern: &str) -> Result<Vec<String>, AnyError> {
    let Some(open) = pattern.find('{') else {
        if pattern.contains('}') {
            return Err(format!("unbalanced brace in {pattern:?}").into());
        }
        return Ok(vec![pattern.to_owned()]);
    };
    let close = pattern[open..]
        .find('}')
        .map(|c| open + c)
        .ok_or_else(|| format!("unbalanced brace in {pattern:?}"))?;
    let (head, body, tail) = (
        &pattern[..open],
        &pattern[open + 1..close],
        &pattern[close + 1..],
    );
    let choices: Vec<String> = if let Some((lo, hi)) = body.split_once("..") {
        let bad = || format!("{{{body}}} in {pattern:?} is not a range of numbers");
        let (a, b): (u64, u64) = (
            lo.parse().map_err(|_| bad())?,
            hi.parse().map_err(|_| bad())?,
        );
        if a > b {
            return Err(bad().into());
        }
        if b - a >= 10_000_000 {
            return Err(format!("{{{body}}} in {pattern:?} names too many files").into());
        }
        (a..=b)
            .map(|v| format!("{v:0width$}", width = lo.len()))
            .collect()
    } else if body.contains(',') {
        body.split(',').map(str::to_owned).collect()
    } else {
        return Err(format!("{{{body}}} in {pattern:?} is neither a range nor a list").into());
    };
    let rest = expand_braces(tail)?;
    Ok(choices
        .iter()
        .flat_map(|c| rest.iter().map(move |r| format!("{head}{c}{r}")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_flag_comes_first_then_kubernetes_then_slurm() {
        let both = [
            ("JOB_COMPLETION_INDEX", "2"),
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_COUNT", "3"),
        ];
        let shard = |index, count| Shard { index, count };
        assert_eq!(resolve(Some("0/4"), None, env(&both)).unwrap(), shard(0, 4));
        assert_eq!(resolve(None, Some(5), env(&both)).unwrap(), shard(2, 5));
        assert_eq!(resolve(None, None, env(&both[1..])).unwrap(), shard(1, 3));
        let offset = [
            ("SLURM_ARRAY_TASK_ID", "11"),
            ("SLURM_ARRAY_TASK_MIN", "10"),
            ("SLURM_ARRAY_TASK_COUNT", "4"),
        ];
        assert_eq!(resolve(None, None, env(&offset)).unwrap(), shard(1, 4));
        assert_eq!(resolve(None, None, env(&[])).unwrap(), Shard::ALL);
    }

    #[test]
    fn shard_mistakes_are_errors() {
        let message = |r: Result<Shard, AnyError>| r.unwrap_err().to_string();
        let k8s = [("JOB_COMPLETION_INDEX", "3")];
        assert!(message(resolve(None, None, env(&k8s))).contains("--shards"));
        assert!(message(resolve(None, Some(3), env(&k8s))).contains("0 <= index < count"));
        assert!(message(resolve(None, Some(3), env(&[]))).contains("JOB_COMPLETION_INDEX"));
        assert!(message(resolve(Some("1/2"), Some(2), env(&[]))).contains("not with --shards"));
        let bad = [("SLURM_ARRAY_TASK_ID", "x")];
        assert!(message(resolve(None, None, env(&bad))).contains("not a shard number"));
        let low = [
            ("SLURM_ARRAY_TASK_ID", "1"),
            ("SLURM_ARRAY_TASK_MIN", "2"),
            ("SLURM_ARRAY_TASK_COUNT", "2"),
        ];
        assert!(message(resolve(None, None, env(&low))).contains("below"));
        for flag in ["1", "2/2", "a/3", "1/0"] {
            assert!(message(parse_shard(flag)).contains("--shard takes I/N"));
        }
    }

    #[test]
    fn braces_expand_ranges_and_lists() {
        assert_eq!(
            expand_braces("d/{00008..00011}.tar").unwrap(),
            ["d/00008.tar", "d/00009.tar", "d/00010.tar", "d/00011.tar"]
        );
        assert_eq!(
            expand_braces("{a,b}-{1..2}.parquet").unwrap(),
            ["a-1.parquet", "a-2.parquet", "b-1.parquet", "b-2.parquet"]
        );
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        for bad in ["{1..", "x}", "{3..1}", "{x..y}", "{single}"] {
            assert!(expand_braces(bad).is_err(), "{bad}");
        }
    }
}

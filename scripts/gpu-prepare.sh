#!/usr/bin/env bash
# Here, before a GPU session (no GPU needed): builds what the GPU machine runs into .gpu/
# (ignored by git; carry it): the release binary at HEAD (.gpu/vecbuild), at OLD
# (.gpu/vecbuild-old, default: the last commit that ran on a GPU) and the integration-test
# binary (.gpu/it-tests), all stripped. Then, on the GPU machine, in one command:
#
#   scripts/gpu-ab.sh .gpu/vecbuild .gpu/vecbuild-old .gpu/it-tests
#   scripts/gpu-check.sh .gpu/vecbuild [--only-cagra1m --skip-faiss-build]
#
#   scripts/gpu-prepare.sh [OLD]
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=${1:-86502f5}
mkdir -p .gpu
cargo build --release
strip -o .gpu/vecbuild target/release/vecbuild
tests=$(cargo test --release --no-run --message-format=json 2>/dev/null \
    | grep '"name":"it"' | grep -o '"executable":"[^"]*"' | cut -d'"' -f4 | tail -1)
[ -n "$tests" ] || { echo "no integration-test binary found" >&2; exit 1; }
strip -o .gpu/it-tests "$tests"
# OLD built in a worktree of its own, into target/gpu-old (kept: the next build is incremental).
tree=$(mktemp -d)
trap 'git worktree remove --force "$tree"' EXIT
git worktree add --detach "$tree" "$OLD" >/dev/null
(cd "$tree" && CARGO_TARGET_DIR="$OLDPWD/target/gpu-old" cargo build --release)
strip -o .gpu/vecbuild-old target/gpu-old/release/vecbuild
ls -la .gpu
du -sh .gpu
echo "carry [\".gpu\"] (64 MiB in all with the rest of the working tree)"

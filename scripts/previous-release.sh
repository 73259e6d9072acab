#!/usr/bin/env bash
# Builds the previous release's binaries (scripts/previous-release names its commit) once,
# from this repository's history, and caches them under target/previous-release/<commit>/bin;
# target/previous-release/bin points there. `make test` runs it before the tests: the
# rolling-update test starts those binaries beside the current ones.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=previous-release source-path=SCRIPTDIR
. scripts/previous-release
root=target/previous-release
dir=$root/$commit
if [ ! -x "$dir/bin/customer-simulator" ]; then
    if ! git cat-file -e "$commit^{commit}" 2>/dev/null; then
        echo "previous-release.sh: commit $commit ($version) is not in this clone's history" >&2
        exit 1
    fi
    echo "previous-release.sh: building $version ($commit) once, into $dir (a few minutes)" >&2
    rm -rf "$dir" && mkdir -p "$dir/src" "$dir/bin"
    git archive "$commit" | tar -x -C "$dir/src"
    # Its own target directory: the binaries must not replace the current ones. Only the
    # binaries are kept.
    (cd "$dir/src" && ORDER_SERVICE_COMMIT="$commit" cargo build -q --locked --workspace --bins --target-dir ../target)
    for program in api outbox-relay saga-worker customer-simulator; do
        cp "$dir/target/debug/$program" "$dir/bin/"
    done
    rm -rf "$dir/src" "$dir/target"
fi
ln -sfn "$commit/bin" "$root/bin"

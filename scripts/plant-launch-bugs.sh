#!/usr/bin/env bash
# plant-launch-bugs.sh: plants one bug at a time in dropkit's CUDA launch code, in a scratch
# copy of the repository (never in the checkout), and runs the CUDA tests on the emulated
# driver (and the library's unit tests), to show which bugs the suite catches. The bugs:
# two pointer arguments swapped at a launch site, a grid one block short, a mask buffer
# one word short, an output buffer left partly unwritten. docs/CUDA.md records a run.
#
#   NVCC=... bash scripts/plant-launch-bugs.sh     (about 15 minutes on 2 cores)
set -uo pipefail
src="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
scratch="$(mktemp -d)"
tmp="$(mktemp -d)"
trap 'rm -rf "$scratch" "$tmp"' EXIT
(cd "$src" && git ls-files -z | xargs -0 -I{} cp --parents {} "$scratch")
# A target directory of the scratch copies' own: dropkit built from planted sources gets
# the same artifact names as the checkout's, so sharing the checkout's target would let a
# cargo run in the checkout execute a planted binary (or a plant run the checkout's).
export CARGO_TARGET_DIR="${DROPKIT_PLANT_TARGET:-$src/target/plant}"
[ -n "${NVCC:-}" ] || { echo "plant-launch-bugs: set NVCC (scripts/install-nvcc.sh)" >&2; exit 2; }
drv="$(cd "$src" && bash scripts/emulated-driver.sh | tail -n 1)"
plant() {  # name file old new
  local name="$1" file="$2" old="$3" new="$4"
  cp "$scratch/$file" "$tmp/orig"
  python3 - "$scratch/$file" "$old" "$new" <<'PY' || { echo "PLANT $name: pattern not found"; return; }
import sys
p, old, new = sys.argv[1:]
s = open(p).read()
if s.count(old) != 1: sys.exit(1)
open(p, "w").write(s.replace(old, new))
PY
  echo "=== plant $name ($file)"
  (cd $scratch && diff -u "$tmp/orig" "$file" | tail -n +3)
  local caught=0
  for t in lib dropout family cuda_edges cuda_oom; do
    local which=(--test "$t")
    [ "$t" = lib ] && which=(--lib)
    (cd "$scratch" && env LD_LIBRARY_PATH="$drv" DROPKIT_REQUIRE_CUDA=1 \
        DKEMU_REPORT_LOG="$tmp/$name.reports" cargo test -q "${which[@]}") >"$tmp/$name-$t.log" 2>&1
    rc=$?
    echo "  $t: exit $rc, $(grep -E 'test result' $tmp/$name-$t.log | tail -1)"
    [ $rc -ne 0 ] && caught=1
  done
  echo "  reports: $(sort $tmp/$name.reports 2>/dev/null | cut -d']' -f1 | uniq -c | tr '\n' ' ')"
  head -c 600 $tmp/$name.reports 2>/dev/null; echo
  for t in lib dropout family cuda_edges cuda_oom; do
    grep -m2 "panicked at\|assertion" "$tmp/$name-$t.log" | sed "s/^/  $t: /" | cut -c1-240
  done
  [ "$caught" = 1 ] && echo "  => caught" || echo "  => NOT caught"
  cp "$tmp/orig" "$scratch/$file"
  rm -f $tmp/$name.reports
}
plant swapped_pointers src/cuda/dropout.rs 'args.arg(&io.x)
        .arg(&io.y)' 'args.arg(&io.y)
        .arg(&io.x)'
plant grid_one_block_short src/cuda/device.rs 'needed.min(cap).clamp(1, u64::from(u32::MAX)) as u32' 'needed.min(cap).saturating_sub(1).clamp(1, u64::from(u32::MAX)) as u32'
plant mask_one_word_short src/cuda/launch.rs 'MaskMode::Bits => MaskSlice::alloc(dev, mask_words(count)).map(Some),' 'MaskMode::Bits => MaskSlice::alloc(dev, mask_words(count).saturating_sub(1)).map(Some),'
plant output_partly_unwritten src/cuda/dropout.rs '    let mut args = dev.stream().launch_builder(&f);
    args.arg(&io.x)
        .arg(&io.y)
        .arg(&io.bits)
        .arg(&io.n)' '    let mut args = dev.stream().launch_builder(&f);
    let n_short = io.n.saturating_sub(1);
    args.arg(&io.x)
        .arg(&io.y)
        .arg(&io.bits)
        .arg(&n_short)'

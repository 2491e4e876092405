# one call: main vs xi (fa3 chained items + index prefetch) on one card; tests, racecheck, POD bench
export LD_LIBRARY_PATH=$PWD/.device/bin:$LD_LIBRARY_PATH
.device/bin/zstd -q -d --long=27 --patch-from=/tmp/fil/libflashinfer.so .device/xi.zst -o /tmp/fil/xi.so && echo "xi ok"
MAIN=/tmp/fil/libflashinfer.so; XI=/tmp/fil/xi.so
nvidia-smi --query-gpu=name --format=csv,noheader | tee $OUT/gpu.txt
probe() { # lib-name lib-path cases...
  local name=$1 L=$2; shift 2
  for w in "$@"; do FLASHINFER_LIBRARY=$L timeout 25 bun bench/wip/probe.ts $w --time 2>&1 | tee -a $OUT/probe_full.log | grep TIME | sed "s/^/$name /" | tee -a $OUT/probe.log; done
}
probe xi $XI short
if ! grep -q "^xi TIME" $OUT/probe.log; then echo "xi failed its first probe: main only"; XI=""; fi
BENCHLIB=$MAIN
if [ -n "$XI" ]; then
  probe xi $XI dense densec bsr vsp16 prefix fused_fa3 d256 d256fa2
  probe main $MAIN short dense densec bsr vsp16 prefix fused_fa3
  probe xi2 $XI short bsr
  FLASHINFER_LIBRARY=$XI FLASHINFER_TEST_DEVICE=cuda timeout 150 bun test --timeout 100000 test/pod.test.ts test/cascade.test.ts test/sparse.test.ts test/prefill.test.ts > $OUT/test_xi.log 2>&1; rc=$?; echo "xi tests rc $rc"
  grep -E "^\(fail\)|error:| pass$| fail$" $OUT/test_xi.log | head -12
  [ $rc = 0 ] && BENCHLIB=$XI
  FLASHINFER_LIBRARY=$XI FLASHINFER_SANITIZER=1 timeout 70 compute-sanitizer --tool racecheck bun test --timeout 300000 -t "density 0.1 over many|one launch" test/sparse.test.ts test/pod.test.ts > $OUT/san_race.log 2>&1; echo "xi racecheck rc $?"
  grep -E "RACECHECK SUMMARY| pass$| fail$" $OUT/san_race.log | head -4
else
  FLASHINFER_TEST_DEVICE=cuda timeout 150 bun test --timeout 100000 test/pod.test.ts test/cascade.test.ts test/sparse.test.ts test/prefill.test.ts > $OUT/test_main.log 2>&1; echo "main tests rc $?"
  grep -E "^\(fail\)|error:| pass$| fail$" $OUT/test_main.log | head -12
fi
echo "bench lib $BENCHLIB"
FLASHINFER_LIBRARY=$BENCHLIB timeout 60 bun bench/pod.bench.ts > $OUT/podbench.log 2>&1; echo "pod bench rc $?"; tail -6 $OUT/podbench.log; cp bench/results/pod.jsonl $OUT/
echo "== summary"; cat $OUT/probe.log

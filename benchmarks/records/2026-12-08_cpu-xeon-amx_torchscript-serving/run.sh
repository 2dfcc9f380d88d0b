cd /work/main
REC=benchmarks/records/2026-12-08_cpu-xeon-amx_torchscript-serving
for round in 1 2 3 4; do
  if [ $((round % 2)) = 1 ]; then order="eager traced"; else order="traced eager"; fi
  for variant in $order; do
    flag=0; [ $variant = traced ] && flag=1
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_load.py --scenarios closed_loop,one_client \
      --app-env MLM_TORCHSCRIPT=$flag --output-stem $REC/round$round-$variant > /dev/null 2>&1
    echo "round $round $variant done $(date +%T) load $(cut -d' ' -f1 /proc/loadavg)"
  done
done

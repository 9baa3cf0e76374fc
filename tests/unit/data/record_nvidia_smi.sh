# How tests/unit/data/nvidia_smi_h100x4_*.csv were recorded (on a 4 x H100 machine, run from the repo root
# with OUT=<dir>): idle, then with GPU 0 holding 30 GB idle, GPU 2 busy with matmuls and GPU 3 both.
set -x
Q="nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu --format=csv,noheader,nounits"
$Q > $OUT/smi_idle.csv
nvidia-smi -L > $OUT/smi_L.txt; ls /proc/driver/nvidia/gpus >> $OUT/smi_L.txt
which nvidia-container-cli nvidia-ctk nvidia-container-runtime-hook docker >> $OUT/smi_L.txt 2>&1
cat > /tmp/load.py <<'PY'
import torch, time, sys
# GPU 0: memory held, idle; GPU 2: busy with matmuls, little memory; GPU 3: both
hold0 = torch.empty(int(30e9), dtype=torch.uint8, device="cuda:0")
hold3 = torch.empty(int(10e9), dtype=torch.uint8, device="cuda:3")
a2 = torch.randn(8192, 8192, device="cuda:2"); a3 = torch.randn(8192, 8192, device="cuda:3")
t = time.time()
while time.time() - t < 25:
    for _ in range(20):
        a2 @ a2; a3 @ a3
    torch.cuda.synchronize(2); torch.cuda.synchronize(3)
PY
python3 /tmp/load.py & P=$!
sleep 15
$Q > $OUT/smi_loaded.csv
sleep 3
$Q >> $OUT/smi_loaded2.csv
wait $P
PYTHONPATH=. python3 -c "
from mlsyskit.gpus import query_gpus, least_used, proc_gpu_count, host_has_gpus, container_toolkit_present
g = query_gpus(); print(g); print('least 2:', [x.index for x in least_used(g, 2)]); print(proc_gpu_count(), host_has_gpus(), container_toolkit_present())
"
nvidia-smi --query-gpu=index,uuid,name,memory.used,memory.total,utilization.gpu --format=csv > $OUT/smi_with_header.csv

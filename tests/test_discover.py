"""NVML discovery on recorded answers, and a plain exit 2 where there is no GPU."""

import pytest

from packer_cli.main import main
from packer_cli.discover import NvmlGpu, match_type, to_pool
from packer.errors import UserError

GB = 1024**3


@pytest.mark.parametrize("name,mem,expected", [
    ("NVIDIA A100-SXM4-80GB", 80 * GB, "a100-80gb"),
    ("NVIDIA A100-SXM4-40GB", 40 * GB, "a100-40gb"),
    ("NVIDIA A100 80GB PCIe", 80 * GB, "a100-80gb"),
    ("NVIDIA H100 80GB HBM3", 80 * GB, "h100-80gb"),
    ("NVIDIA L4", 23 * GB, "l4-24gb"),
    ("Tesla T4", 15 * GB, "t4-16gb"),
    ("NVIDIA L40S", 45 * GB, "l40s-48gb"),
    ("NVIDIA A30", 24 * GB, "a30-24gb"),
], ids=lambda v: str(v))
def test_product_names_map_to_catalog_types(name, mem, expected):
    assert match_type(name, mem).name == expected


def test_recorded_a100_node_with_mig_becomes_a_pool_entry():
    gpus = [NvmlGpu(0, "NVIDIA A100-SXM4-80GB", 85899345920, 1,
                    ("NVIDIA A100-SXM4-80GB MIG 3g.40gb", "NVIDIA A100-SXM4-80GB MIG 3g.40gb")),
            NvmlGpu(1, "NVIDIA A100-SXM4-80GB", 85899345920, 0, ())]
    out = to_pool(gpus, name="a100", cost_per_gpu_hour=4.1)
    assert out["pool"] == {"name": "a100", "gpu": "a100-80gb", "gpus_per_node": 2, "max_nodes": 1,
                           "cost_per_gpu_hour": 4.1, "sharing": ["mig", "time-slicing"]}
    assert out["mig"][0] == {"gpu": 0, "mig_enabled": True, "instances": ["3g.40gb", "3g.40gb"]}
    assert out["mig"][1]["mig_enabled"] is False


def test_recorded_h200_with_mig_off_becomes_a_pool_entry():
    """What NVML said on a real machine (the device tool's H200, driver 580.159.04, 2026-12-04:
    bench/device.sh): MIG-capable, MIG mode 0, no MIG devices."""
    gpus = [NvmlGpu(index=0, name="NVIDIA H200", memory_total_bytes=150754820096, mig_mode=0, mig_devices=())]
    out = to_pool(gpus)
    assert out["pool"] == {"name": "local", "gpu": "h200-141gb", "gpus_per_node": 1, "max_nodes": 1,
                           "cost_per_gpu_hour": 1.0, "sharing": ["mig", "time-slicing"]}
    assert out["devices"] == [{"index": 0, "product": "NVIDIA H200", "memory_gb": 150.8, "type": "h200-141gb"}]
    assert out["mig"] == [{"gpu": 0, "mig_enabled": False, "instances": []}] and out["unknown"] == []


def test_l4_pool_has_no_mig():
    out = to_pool([NvmlGpu(0, "NVIDIA L4", 23 * GB, None)])
    assert out["pool"]["sharing"] == ["time-slicing"] and out["mig"] == []


def test_unknown_product_is_a_user_error():
    with pytest.raises(UserError):
        to_pool([NvmlGpu(0, "Matrox G200", 1 * GB)])


def test_gpus_local_without_a_gpu_exits_2(capsys):
    try:
        import pynvml
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
        pytest.skip("this machine has an NVIDIA driver")
    except Exception:
        pass
    assert main(["gpus", "--local"]) == 2
    err = capsys.readouterr().err
    assert "no NVIDIA GPU or driver" in err and "Traceback" not in err

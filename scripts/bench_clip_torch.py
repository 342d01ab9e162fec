"""PyTorch transformers' CLIPModel, the anchor of `xcomposer bench clip`.

  make ARCH OUT           write a random-weight CLIPModel of ARCH's real shapes (B/32 or L/14)
                          to OUT with save_pretrained (safetensors), for both sides to load
  time OUT BATCHES RUNS DTYPES
                          time get_image_features at each batch size (comma-separated) in each
                          dtype (f32, f16; comma-separated) on CUDA; print one JSON object
  profile OUT BATCH       where one f16 call's GPU time goes (torch.profiler, CUDA kernels
                          grouped by name, the 15 largest), to compare with XC_ENCODER_PROFILE

PyTorch's f32 matmuls run in true f32 (TF32 off, its default); burn-cuda's use TF32 tensor cores.
Timing matches the Rust side: inputs already on the GPU, 3 warm-up calls, then RUNS timed calls
of the vision tower + projection, each ended by torch.cuda.synchronize(); the median is kept.
"""
import json
import statistics
import sys
import time

import torch
import transformers
from transformers import CLIPConfig, CLIPModel

ARCHS = {
    "B/32": dict(vision=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=32, image_size=224),
                 text=dict(hidden_size=512, intermediate_size=2048, num_hidden_layers=12, num_attention_heads=8), projection_dim=512),
    "L/14": dict(vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, patch_size=14, image_size=224),
                 text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12), projection_dim=768),
}


def make(arch, out):
    a = ARCHS[arch]
    cfg = CLIPConfig(text_config=a["text"], vision_config=a["vision"], projection_dim=a["projection_dim"])
    torch.manual_seed(0)
    CLIPModel(cfg).save_pretrained(out, safe_serialization=True)


def time_model(out, batches, runs, dtypes):
    res = {"torch": torch.__version__, "transformers": transformers.__version__, "gpu": torch.cuda.get_device_name(0), "images_per_s": {}}
    for dtype, name in ((torch.float32, "f32"), (torch.float16, "f16")):
        if name not in dtypes:
            continue
        model = CLIPModel.from_pretrained(out, torch_dtype=dtype).cuda().eval()
        size = model.config.vision_config.image_size
        for b in batches:
            x = torch.randn(b, 3, size, size, device="cuda", dtype=dtype)
            with torch.no_grad():
                for _ in range(3):
                    model.get_image_features(pixel_values=x)
                torch.cuda.synchronize()
                times = []
                for _ in range(runs):
                    t = time.perf_counter()
                    model.get_image_features(pixel_values=x)
                    torch.cuda.synchronize()
                    times.append(time.perf_counter() - t)
            res["images_per_s"][f"{name}-{b}"] = b / statistics.median(times)
        del model
        torch.cuda.empty_cache()
    print(json.dumps(res))


def profile(out, batch):
    model = CLIPModel.from_pretrained(out, torch_dtype=torch.float16).cuda().eval()
    size = model.config.vision_config.image_size
    x = torch.randn(batch, 3, size, size, device="cuda", dtype=torch.float16)
    with torch.no_grad():
        for _ in range(3):
            model.get_image_features(pixel_values=x)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            model.get_image_features(pixel_values=x)
            torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=15, max_name_column_width=90))


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], sys.argv[3])
    elif sys.argv[1] == "time":
        time_model(sys.argv[2], [int(b) for b in sys.argv[3].split(",")], int(sys.argv[4]), sys.argv[5].split(",") if len(sys.argv) > 5 else ["f32", "f16"])
    elif sys.argv[1] == "profile":
        profile(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit(__doc__)

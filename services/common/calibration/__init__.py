"""The technique-neutral calibration core: a model streamed block by block from its checkpoint
(`streaming`), the inputs captured at the first block, one block run on them and its Linears'
input statistics (`blocks`), and the sequential driver that walks the blocks handing each to a
technique's step (`sequential`). Quantization, pruning and distillation steps plug into it; the
text windows themselves are in services/common/datasets/calibration_text.py."""

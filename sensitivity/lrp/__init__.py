"""Layer-wise relevance propagation: captum's rules on a canonized copy of
convolutional/MLP models (`captum_rules`) and AttnLRP-style modified-gradient
rules for any model, transformers included (`modified_gradient`). Both return
per-layer relevance totals (signed and absolute) for the quantizable layers."""

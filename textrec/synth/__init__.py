"""Word images for training, in two stages (issue 10: data at GPU speed).

- `glyphs`: on CPU workers, per string: the text, a font that draws it, its rasterised mask.
- `scene`: batched on the training device, per sample random parameters: geometry, colours,
  background, clutter, composite; `camera`: blur, low resolution, noise, compression.
- `params`: the one table of effects and probabilities, for synthetic and real samples.
- `pipeline`: the loader side (samples -> padded uint8 batches) and the device side (batches ->
  model input), used by training, `textrec synth` and `textrec samples`.
"""

"""Reference zoo: small trained models + deterministic synthetic data for quantization tests.

Models (each module exposes ``build(pretrained=False, **kw)``, ``forward_batch(model, batch)``,
``loss(output, batch)``, ``evaluate(model, loader)`` and ``train_data`` / ``calibration_data``
/ ``val_data`` factories; see ``recipe_engine/zoo/README.md``):

* :mod:`recipe_engine.zoo.centerpoint` -- CenterPoint-lite (spconv encoder + SECOND/FPN + centre head)
* :mod:`recipe_engine.zoo.bevfusion` -- BEVFusion-lite (lidar + camera, LSS view transform, ConvFuser)
* :mod:`recipe_engine.zoo.pointpillars` -- PointPillars-lite (raw-point pillar net, BEV pseudo-image, SECOND/FPN, centre head)
* :mod:`recipe_engine.zoo.digits` -- residual CNN on scikit-learn digits

Submodules are imported lazily so that ``import recipe_engine.zoo`` does not pull in spconv.
"""

MODELS: tuple[str, ...] = ("centerpoint", "bevfusion", "digits", "pointpillars")

"""The encoders of a study (:class:`MethodSpec`) and the controls added beside a fitted model."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MethodSpec:
    """One encoder of the study.

    Attributes
    ----------
    name : registered encoder name (``matrep encoders``)
    params : encoder parameters (``--param NAME.KEY=VALUE``)
    model : path of a saved fitted model (``--model NAME=PATH``), or None
    label : the row's name in the report (default ``name``); controls use e.g.
        ``"texturevae (untrained head)"``
    role : ``"method"`` (named by the user) or ``"control"`` (added by the study)
    control_of : label of the method a control stands beside, or None
    fit_all : fit once on all the study's patches (without labels) instead of inside each
        split: a control's feature standardisation, set on the same patches the given model
        is applied to
    note : how a control was made (for the report)
    """

    name: str
    params: dict = field(default_factory=dict)
    model: str | None = None
    label: str | None = None
    role: str = "method"
    control_of: str | None = None
    fit_all: bool = False
    note: str = ""

    @property
    def key(self) -> str:
        """The row's name: ``label``, or the encoder name."""
        return self.label or self.name

    def describe(self) -> dict:
        d = {"name": self.name, "params": self.params, "model": self.model}
        if self.key != self.name:
            d["label"] = self.key
        if self.fit_all:
            d["fit_all"] = True
        return d


def texturevae_controls(spec: MethodSpec, encoder) -> tuple[list[MethodSpec], list[str]]:
    """The two controls of a trained texture-VAE given as a fitted model.

    * ``"<label> (untrained head)"``: the model's own configuration (``get_params``, so the
      same seed) with ``epochs=0``, fitted once on all the study's patches. Fitting sets the
      feature standardisation from those patches and builds the head from the seed, exactly
      as training starts, and takes no gradient step: the trained model's starting point
      when it was trained on these patches.
    * ``"vgg19 (style mean/std)"``: the ``vgg19`` encoder on the texture-VAE's encoder taps
      with its pooling (per-channel mean and standard deviation by default) and its weights:
      the very statistics the head maps to the latent code.

    Parameters
    ----------
    spec : the texture-VAE's MethodSpec (with ``model``)
    encoder : the loaded model (``matrep.load_model``)

    Returns
    -------
    controls : list of MethodSpec
    notes : list of str — controls that could not be made, and why
    """
    p = dict(encoder.get_params(deep=False))
    seed = p.get("seed", "?")
    out, notes = [], []
    out.append(MethodSpec(
        spec.name, {**p, "epochs": 0}, label=f"{spec.key} (untrained head)", role="control",
        control_of=spec.key, fit_all=True,
        note=(f"control for {spec.key}: its configuration (seed {seed}) with epochs=0, fitted "
              "once on all the study's patches (no labels): the feature standardisation is set "
              "from them and the head keeps its seeded initialisation; no gradient step")))
    pooling = {"meanstd": "meanstd", "mean": "mean"}.get(p.get("pooling", "meanstd"))
    taps = list(p.get("encoder_taps") or ())
    if pooling is None or not taps:
        notes.append(f"no vgg19 control for {spec.key}: its pooling {p.get('pooling')!r} / "
                     f"taps {taps} have no vgg19 equivalent")
        return out, notes
    where = "style" if tuple(taps) == ("conv1_1", "pool1", "pool2", "pool3", "pool4") \
        else "+".join(taps)
    what = "mean/std" if pooling == "meanstd" else "mean"
    params = {"layer": taps, "pooling": pooling, "weights": p.get("weights", "auto")}
    ds = int(p.get("downsample", 1) or 1)
    if ds > 1:  # the model reads its patches at 1/ds resolution: so does its control
        params["downsample"] = ds
    out.append(MethodSpec(
        "vgg19", params, label=f"vgg19 ({where} {what})", role="control", control_of=spec.key,
        note=(f"control for {spec.key}: frozen VGG19 per-channel {what} of its encoder taps "
              f"({', '.join(taps)}), the statistics its head maps to the latent code, with "
              "the same weights" + (f", patches downsampled {ds}x like the model's" if ds > 1
                                    else ""))))
    return out, notes


#: Controls added beside a method given as a fitted model, by registered encoder name.
CONTROLS = {"texturevae": texturevae_controls}

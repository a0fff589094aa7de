"""`SyntheticCXRConfig`: every knob of the chest X-ray phantom generator.

Under Hydra these are the options of `data=synthetic_cxr`'s source (`data.source.n_patients`,
`data.source.image_size`, ...), which is how error messages name them. The transition model
itself (which event moves which finding, and by how much) is documented data in
`ehrlab.data.synthetic_cxr.model`, not a knob: the planted ceiling is computed from it.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from ehrlab.errors import UserInputError


@dataclass
class SyntheticCXRConfig:
    """Defaults: a set that the small models of seed 004's family train on in minutes on a
    2-core CPU (1,000 patients: about 5,300 adult frontal images in stays, 5,500 pairs under 48 h)."""

    n_patients: int = 1000
    #: side of the square JPEGs written (the task resizes again to its own `image_size`)
    image_size: int = 128
    seed: int = 0
    jpeg_quality: int = 90
    #: share of patients under 18 at their admissions (the reader's age filter drops them)
    minor_fraction: float = 0.03
    #: share of patients with one extra study outside any admission (the reader drops it)
    outside_study_fraction: float = 0.08
    #: per study: a second frontal image, a lateral image (more often with PA: "PA and LAT")
    second_frontal_rate: float = 0.05
    lateral_rate_pa: float = 0.6
    lateral_rate_ap: float = 0.05
    #: frontal studies that are portable AP (the rest PA); MIMIC-CXR's ICU share is high
    ap_fraction: float = 0.7
    #: CheXpert recording (per study and finding): among mentioned labels the share recorded
    #: as the opposite class; uncertain (-1) and not mentioned (blank) rates by true state
    chexpert_flip: float = 0.02
    chexpert_uncertain_absent: float = 0.03
    chexpert_uncertain_present: float = 0.08
    chexpert_blank_absent: float = 0.3
    chexpert_blank_present: float = 0.02
    #: Chest ImaGenome-style per-image labels: share recorded as the opposite class
    imagenome_flip: float = 0.01
    #: scale of the spontaneous changes (a finding changing with no event acting on it,
    #: `model.transition_probabilities`): 1 the documented rates, 0 every change event-driven
    spontaneous_change: float = 1.0
    #: strength of the weak, arbitrary race cue (a shift of soft-tissue density in units of
    #: its between-patient spread; 0 = race is not in the image at all), see `phantom`
    race_cue: float = 0.5
    #: how much of the texture (vessel markings, the patchy texture of consolidation and
    #: edema, where a consolidation's blobs sit) each image draws anew: 1 all of it, 0 none, one
    #: texture per patient (`phantom`); below 1 more of the change between two images of a
    #: patient is their findings' change
    texture_change: float = 1.0
    #: scale of every image's deviation from the reference pose and exposure (at 1: rotation
    #: +-5 deg, scale +-5 %, shift +-4 %, gain +-10 %, gamma +-15 %; 0: all at the reference)
    acquisition_jitter: float = 1.0

    def __post_init__(self) -> None:
        def fail(name: str, rule: str) -> None:
            raise UserInputError(f"data.source.{name}={getattr(self, name)!r}: {rule}; set it in "
                                 "conf/data/synthetic_cxr.yaml or on the command line.")

        if int(self.n_patients) < 1:
            fail("n_patients", "needs at least 1 patient")
        if not 16 <= int(self.image_size) <= 1024:
            fail("image_size", "must lie in 16 .. 1024 pixels")
        if not 1 <= int(self.jpeg_quality) <= 100:
            fail("jpeg_quality", "must lie in 1 .. 100")
        for item in fields(self):
            if item.type == "float" and not 0.0 <= float(getattr(self, item.name)) <= 1.0 and item.name != "race_cue":
                fail(item.name, "is a rate and must lie in 0 .. 1")
        if self.chexpert_uncertain_absent + self.chexpert_blank_absent >= 1:
            fail("chexpert_blank_absent", "plus chexpert_uncertain_absent must stay below 1")
        if self.chexpert_uncertain_present + self.chexpert_blank_present >= 1:
            fail("chexpert_blank_present", "plus chexpert_uncertain_present must stay below 1")
        if self.chexpert_flip >= 0.5 or self.imagenome_flip >= 0.5:
            fail("chexpert_flip" if self.chexpert_flip >= 0.5 else "imagenome_flip", "must stay below 0.5")
        if float(self.race_cue) < 0:
            fail("race_cue", "must be >= 0")

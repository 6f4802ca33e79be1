"""Named model presets: network, diffusion, model grid and training defaults.

A preset fixes everything a checkpoint needs to be used: the network
hyper-parameters, the noise schedule, and the model grid (shape in voxels of the
image, before the wavelet transform, and voxel spacing in mm).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .diffusion import DiffusionConfig
from .network import NetworkConfig


@dataclass(frozen=True)
class GridConfig:
    """The image grid the network works on: shape (voxels) and spacing (mm), RAS axes.

    ``patch`` (voxels, empty for none) is the block a patch-trained network was trained on;
    such a network is run block by block over the grid, so it always sees what it learned on.
    """

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    patch: tuple[int, ...] = ()

    def validate(self, divisor: int) -> None:
        if len(self.shape) != 3 or len(self.spacing) != 3:
            raise ValueError("the model grid needs three sizes and three spacings")
        if self.patch:
            step = 2 * divisor
            if len(self.patch) != 3 or any(p <= 0 or p % step or p > s for p, s in zip(self.patch, self.shape)):
                raise ValueError(
                    f"a training patch needs three sizes, each a positive multiple of {step} "
                    f"and at most the grid's; got {self.patch}"
                )
        if any(s <= 0 for s in self.spacing):
            raise ValueError("grid spacings must be positive")
        step = 2 * divisor
        if any(s <= 0 or s % step for s in self.shape):
            raise ValueError(
                f"every side of the model grid must be a positive multiple of {step} "
                f"(the wavelet transform halves it, then the network halves it "
                f"{divisor.bit_length() - 1} times); got {self.shape}"
            )


@dataclass(frozen=True)
class TrainingDefaults:
    learning_rate: float = 1e-5
    batch_size: int = 1
    ema_decay: float = 0.999
    grad_clip: float = 1.0
    augment: float = 0.0  # probability of warping a training item (see augment.py)


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    network: NetworkConfig
    grid: GridConfig
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    training: TrainingDefaults = field(default_factory=TrainingDefaults)
    dilate: int = 0
    stage: str = "outpaint"  # or "refine": see STAGES


#: "outpaint": the network sees [x_t, c] (16 channels) on the whole grid and makes the anatomy.
#: "refine": the second stage of a cascade; it also sees the first stage's image at half its
#: resolution (one more channel, on the wavelet grid) and adds the detail that grid cannot hold.
STAGES = ("outpaint", "refine")

_DEMO = Preset(
    name="demo",
    description="The bundled demonstration network: base 32, 3 levels, 64x64x48 at 3.6 mm (CPU-sized).",
    network=NetworkConfig(
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(2,),
        head_channels=32,
        norm_groups=8,
    ),
    grid=GridConfig(shape=(64, 64, 48), spacing=(3.6, 3.6, 3.6)),
    training=TrainingDefaults(learning_rate=5e-4, batch_size=2, ema_decay=0.998),
)

_REFINE = Preset(
    name="refine",
    description=(
        "The bundled cascade's second stage: 128x128x96 at 1.8 mm, trained on 64-voxel blocks "
        "(115 mm), refining a 3.6 mm first stage; base 32, 3 levels, no attention (CPU-sized)."
    ),
    network=NetworkConfig(
        in_channels=17,
        base_channels=32,
        channel_mult=(1, 2, 2),
        num_res_blocks=1,
        attention_levels=(),
        head_channels=32,
        norm_groups=8,
    ),
    grid=GridConfig(shape=(128, 128, 96), spacing=(1.8, 1.8, 1.8), patch=(64, 64, 64)),
    training=TrainingDefaults(learning_rate=5e-4, batch_size=2, ema_decay=0.998, augment=0.8),
    stage="refine",
)

# The demo network at 1.5x the width on the demo's grid: the demo network stops learning at an x0
# loss of about 0.0064 and then misses a quarter of the detail even of a clean training image, so
# the next first stage is wider, sized so a cascade stays under 25 MB.
_DEMO_WIDE = replace(
    _DEMO,
    name="demo-wide",
    description=(
        "The demo network at 1.5x the width: base 48, 3 levels, the demo's 64x64x48 grid at 3.6 mm "
        "(6.6 M parameters)."
    ),
    network=replace(_DEMO.network, base_channels=48),
    training=replace(_DEMO.training, augment=0.8),
)

PRESETS: dict[str, Preset] = {
    "paper": Preset(
        name="paper",
        description="The paper's brain network: base 64, multipliers 1,2,2,4,4, 224x224x160 at 1 mm.",
        network=NetworkConfig(),
        grid=GridConfig(shape=(224, 224, 160), spacing=(1.0, 1.0, 1.0)),
    ),
    "knee": Preset(
        name="knee",
        description="The paper's knee network: 288x288x160 at 0.5 mm, lesion masks dilated by 3 voxels.",
        network=NetworkConfig(),
        grid=GridConfig(shape=(288, 288, 160), spacing=(0.5, 0.5, 0.5)),
        dilate=3,
    ),
    "small": Preset(
        name="small",
        description="A laptop-sized brain network: base 32, 3 levels, 96x96x64 at 2.4 mm.",
        network=NetworkConfig(
            base_channels=32,
            channel_mult=(1, 2, 4),
            num_res_blocks=2,
            attention_levels=(2,),
            head_channels=32,
            norm_groups=16,
        ),
        grid=GridConfig(shape=(96, 96, 64), spacing=(2.4, 2.4, 2.4)),
        training=TrainingDefaults(learning_rate=2e-4, batch_size=2, ema_decay=0.995),
    ),
    "demo": _DEMO,
    # The demo network at half the width on the demo's own grid: a guide must share its first
    # stage's grid, so it is derived from it rather than written out again.
    "demo-guide": replace(
        _DEMO,
        name="demo-guide",
        description=(
            "A deliberately weak twin of the demo network, to guide it (autoguidance): base 16, "
            "3 levels, the demo's 64x64x48 grid at 3.6 mm; train it far shorter than the demo network."
        ),
        network=replace(_DEMO.network, base_channels=16, head_channels=16),
        training=replace(_DEMO.training, augment=0.8),
    ),
    "demo-wide": _DEMO_WIDE,
    # The demo-wide network one octave coarser. On the demo grid the first stage spends its
    # capacity on 3.6 mm detail and loses the layout of grey and white matter; on 7.2 mm the whole
    # brain is 20-odd voxels across, the network's deepest level sees all of it, and the demo
    # cascade's detail stage (trained to draw 3.6 mm from a true 7.2 mm image) draws the rest.
    "demo-coarse": replace(
        _DEMO_WIDE,
        name="demo-coarse",
        description=(
            "A first stage for the layout only: the demo-wide network (base 48, 3 levels) on 32x32x24 at "
            "7.2 mm; join it with a demo-detail stage (which draws 3.6 mm) and a refine stage (1.8 mm)."
        ),
        grid=GridConfig(shape=(32, 32, 24), spacing=(7.2, 7.2, 7.2)),
    ),
    "refine": _REFINE,
    # The first stage draws a fair 7.2 mm layout but not the 3.6 mm detail on it (gyri, the cortical
    # ribbon), which is a local matter: nearest-neighbour look-up of 3x3x3 low-pass neighbourhoods in
    # the training brains already restores it. This stage redraws the demo grid's detail from its
    # low-pass with the refine stage's network, trained on 115 mm blocks like the refine stage one
    # octave finer.
    "demo-detail": replace(
        _REFINE,
        name="demo-detail",
        description=(
            "A middle stage for the demo cascade: redraws the 3.6 mm detail of the demo grid (64x64x48) from "
            "its 7.2 mm low-pass, trained on 32-voxel (115 mm) blocks; base 32, 3 levels, no attention."
        ),
        grid=replace(_DEMO.grid, patch=(32, 32, 32)),
        training=replace(_REFINE.training, batch_size=4),
    ),
    "tiny-refine": Preset(
        name="tiny-refine",
        description="A test-sized second stage: base 16, 2 levels, 64x64x48 at 3.6 mm, 32-voxel blocks.",
        network=NetworkConfig(
            in_channels=17,
            base_channels=16,
            channel_mult=(1, 2),
            num_res_blocks=1,
            attention_levels=(),
            head_channels=16,
            norm_groups=8,
        ),
        grid=GridConfig(shape=(64, 64, 48), spacing=(3.6, 3.6, 3.6), patch=(32, 32, 32)),
        training=TrainingDefaults(learning_rate=1e-3, batch_size=2, ema_decay=0.9, augment=0.5),
        stage="refine",
    ),
    "tiny": Preset(
        name="tiny",
        description="A test-sized network: base 16, 3 levels, 48x48x32 at 4.8 mm.",
        network=NetworkConfig(
            base_channels=16,
            channel_mult=(1, 2, 2),
            num_res_blocks=1,
            attention_levels=(2,),
            head_channels=16,
            norm_groups=8,
        ),
        grid=GridConfig(shape=(48, 48, 32), spacing=(4.8, 4.8, 4.8)),
        training=TrainingDefaults(learning_rate=1e-3, batch_size=2, ema_decay=0.9),
    ),
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}") from None

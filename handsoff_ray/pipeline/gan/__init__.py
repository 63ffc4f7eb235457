"""`handsoff train-gan`: a StyleGAN2 for the user's own domain, trained in this process or on Ray Train.

    from handsoff_ray.pipeline.gan import train_gan
    result = train_gan(spec, engine="ray", max_minutes=30)   # resumable; exports <run>/gan/generator.safetensors

Modules: data.py (the training images: any pool source, seeded epochs, held-out images), train.py (the
worker loop both engines run, the engines), checkpoints.py (checkpoint folders in the run's storage,
Ray Train's checkpoint API), card.py (proxy KID, sample grids, model card, export). The training step
itself is pure PyTorch: core/gan_step.py.
"""

from handsoff_ray.pipeline.gan.card import export_generator, kid_feature, model_card
from handsoff_ray.pipeline.gan.checkpoints import GAN_DIR, latest_state
from handsoff_ray.pipeline.gan.data import TrainImages
from handsoff_ray.pipeline.gan.train import train_gan

__all__ = ["train_gan", "export_generator", "model_card", "kid_feature", "latest_state", "TrainImages", "GAN_DIR"]

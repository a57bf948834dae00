import pytest
import torch

from fer_lab.models.decoder import CodeDecoder, image_target, reconstruction_loss


@pytest.mark.parametrize("size", [8, 16, 32, 64])
def test_shapes_and_range(size):
    dec = CodeDecoder((10, 6), out_size=size)
    out = dec(torch.randn(3, 10), torch.randn(3, 6)).detach()
    assert out.shape == (3, 3, size, size)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="power of two"):
        CodeDecoder((4,), out_size=24)
    with pytest.raises(ValueError, match="power of two"):
        CodeDecoder((4,), out_size=4)
    with pytest.raises(ValueError, match="positive sizes"):
        CodeDecoder((0, 3))
    dec = CodeDecoder((4, 2), out_size=8)
    with pytest.raises(ValueError, match=r"codes of sizes \(4, 2\)"):
        dec(torch.zeros(1, 4), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="codes of sizes"):
        dec(torch.zeros(1, 4))


def test_losses_on_constructed_inputs():
    images = torch.zeros(1, 1, 4, 4)
    images[..., :2, :2] = 1.0                         # top-left 2x2 block
    target = image_target(images, 2)
    assert target.flatten().tolist() == [1.0, 0.0, 0.0, 0.0]   # area average
    assert image_target(images, 4) is images
    assert image_target(images, 8).shape[-1] == 8
    recon = torch.full((1, 1, 2, 2), 0.5)
    assert float(reconstruction_loss(recon, images, "l1")) == pytest.approx(0.5)
    assert float(reconstruction_loss(recon, images, "l2")) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="'l1' or 'l2'"):
        reconstruction_loss(recon, images, "l3")

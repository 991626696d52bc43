"""An image-classifier trainer (Conv + BatchNorm + Linear, AdamW, StepLR) with its own
``save``/``resume`` (``torch.save``/``torch.load``), and the resume bugs found in real
projects, each injected by name (``Trainer("bn frozen")``): the drift gallery runs them and
tests/test_resume_remedies.py asserts what users read."""

import numpy
import torch
from torch import nn


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.head = nn.Linear(4 * 6 * 6, 5)

    def forward(self, x):
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


class State:
    def __init__(self, model, optimizer, scheduler, step=0):
        self.model, self.optimizer, self.scheduler, self.step = model, optimizer, scheduler, step


class Trainer:
    def __init__(self, bug=None):
        self.bug = bug

    def build(self):
        model = Classifier()
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return State(model, optimizer, torch.optim.lr_scheduler.StepLR(optimizer, 2, 0.5))

    def step(self, state):
        x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 5, (4,))
        loss = nn.functional.cross_entropy(state.model(x), y)
        state.optimizer.zero_grad()
        loss.backward()
        state.optimizer.step()
        state.scheduler.step()
        state.step += 1
        return loss.item()

    def save(self, state, path):
        checkpoint = {"model": state.model.state_dict(),
                      "optimizer": state.optimizer.state_dict(),
                      "scheduler": state.scheduler.state_dict(),
                      "global_step": state.step, "rng": torch.get_rng_state()}
        if self.bug == "optimizer saved as None":  # an "inference-light" checkpoint
            checkpoint["optimizer"] = None
        if self.bug == "optimizer never saved":
            del checkpoint["optimizer"]
        if self.bug == "step saved as step":
            checkpoint["step"] = checkpoint.pop("global_step")
        if self.bug and self.bug.startswith("numpy rng saved"):
            checkpoint["numpy_rng"] = numpy.random.get_state()
        if self.bug == "numpy rng saved as lists":  # the remedy the diagnosis gives
            state_ = checkpoint["numpy_rng"]
            checkpoint["numpy_rng"] = (state_[0], state_[1].tolist(), *state_[2:])
        if self.bug and self.bug.startswith("rng saved as floats"):
            checkpoint["rng"] = torch.get_rng_state().float().tolist()
        torch.save(checkpoint, path)

    def resume(self, path):
        if self.bug == "numpy rng saved, torch.load default":
            checkpoint = torch.load(path)
        else:
            checkpoint = torch.load(path, weights_only=True)
        model = Classifier()
        model.load_state_dict(checkpoint["model"])
        if self.bug == "bn frozen":  # fine-tune: BatchNorm affine frozen from here on
            for parameter in model.bn.parameters():
                parameter.requires_grad_(False)
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                      lr=1e-2)
        if checkpoint.get("optimizer") is not None:
            optimizer.load_state_dict(checkpoint["optimizer"])
        if self.bug == "lr_initial typo":  # re-derive the decayed LR from the base LR
            for group in optimizer.param_groups:
                group["lr"] = group["lr_initial"] * 0.5 ** (checkpoint["global_step"] // 2)
        resumed_epoch = checkpoint["scheduler"]["last_epoch"]
        scheduler = torch.optim.lr_scheduler.StepLR(
            optimizer, 2, 0.5, last_epoch=resumed_epoch if "optimizer" in str(self.bug) else -1)
        scheduler.load_state_dict(checkpoint["scheduler"])
        if self.bug == "rng saved as floats":
            torch.set_rng_state(torch.tensor(checkpoint["rng"]))
        elif self.bug == "rng saved as floats, restored as uint8":  # the remedy
            torch.set_rng_state(torch.tensor(checkpoint["rng"], dtype=torch.uint8))
        else:
            torch.set_rng_state(checkpoint["rng"])
        if self.bug == "numpy rng saved as lists":
            numpy.random.set_state(checkpoint["numpy_rng"])
        return State(model, optimizer, scheduler, checkpoint["global_step"])

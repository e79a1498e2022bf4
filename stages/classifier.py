"""python stages/classifier.py --triplets data/triplets.parquet --out models/judge_classifier.joblib --metrics metrics/classifier.json

Train the classifier judge: TF-IDF (word and character n-grams) + logistic regression on
refusal vs compliance texts from the triplets (plus a small built-in set of generic
sentences, see libra/eval/judges/classifier.py). Held-out accuracy on a stratified split
(classifier.test_frac, classifier.seed) goes to --metrics; the saved model is then refit
on every text. XSTest is never used here: it is the judges' validation set.
"""

from __future__ import annotations

import argparse

from libra.config import load_params
from libra.eval.judges.classifier import save, train, training_texts
from libra.io import read_parquet, write_json
from libra.stage import entrypoint


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--triplets", required=True, help="triplets parquet (label, chosen, rejected)")
    p.add_argument("--out", required=True, help="joblib file to write the trained model to")
    p.add_argument("--metrics", required=True, help="json file for held-out accuracy and counts")
    return p.parse_args()


@entrypoint
def main() -> None:
    args = parse_args()
    params = load_params()

    # Load
    texts, labels = training_texts(read_parquet(args.triplets))

    # Train
    model, metrics = train(texts, labels, params.classifier)

    # Save
    save(model, args.out)
    write_json({**metrics, "params": model.params, "params_hash": model.params_hash}, args.metrics)
    print(
        f"classifier: {metrics['n_texts']} texts ({metrics['n_refusal']} refusal, {metrics['n_compliance']} compliance); "
        f"held-out accuracy {metrics['test_accuracy']:.3f} on {metrics['n_test']}; wrote {args.out}"
    )


if __name__ == "__main__":
    main()

import torch

from auglens.train import classification_report


def _loop_report(pred, target, k):
    tp = [0] * k
    fp = [0] * k
    fn = [0] * k
    for p, t in zip(pred.tolist(), target.tolist(), strict=True):
        if p == t:
            tp[t] += 1
        else:
            fp[p] += 1
            fn[t] += 1
    prec = [tp[c] / (tp[c] + fp[c]) if tp[c] + fp[c] else 0.0 for c in range(k)]
    rec = [tp[c] / (tp[c] + fn[c]) if tp[c] + fn[c] else 0.0 for c in range(k)]
    f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(prec, rec, strict=True)]
    return sum(tp) / len(pred), sum(prec) / k, sum(rec) / k, sum(f1) / k, rec


def test_report_matches_loop():
    g = torch.Generator().manual_seed(0)
    k = 5
    target = torch.randint(0, k, (300,), generator=g)
    pred = torch.where(
        torch.rand(300, generator=g) < 0.6, target, torch.randint(0, k, (300,), generator=g)
    )
    pred[pred == 4] = 3  # class 4 never predicted: precision 0 by convention
    r = classification_report(pred, target, k)
    acc, p, rc, f1, per = _loop_report(pred, target, k)
    assert abs(r["accuracy"] - acc) < 1e-12
    assert abs(r["precision"] - p) < 1e-12
    assert abs(r["recall"] - rc) < 1e-12
    assert abs(r["f1"] - f1) < 1e-12
    assert all(abs(a - b) < 1e-12 for a, b in zip(r["per_class_accuracy"], per, strict=True))
    assert sum(map(sum, r["confusion_matrix"])) == 300

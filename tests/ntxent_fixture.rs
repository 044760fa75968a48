//! NT-Xent pinned to an independent implementation: loss and gradients computed by PyTorch
//! in float64 (scripts/ntxent_fixtures.py) on fixed inputs, committed as a fixture.

use serde_json::Value;
use simclr::autograd::Graph;
use simclr::ops;
use simclr::tensor::{DType, Tensor};

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

fn rel_err(a: &[f64], b: &[f64]) -> f64 {
    let diff: f64 = a.iter().zip(b).map(|(x, y)| (x - y).powi(2)).sum();
    let norm: f64 = b.iter().map(|y| y * y).sum::<f64>().max(1e-30);
    (diff / norm).sqrt()
}

#[test]
fn ntxent_matches_pytorch() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/ntxent.json"
    ))
    .unwrap();
    let fixture: Value = serde_json::from_str(&text).unwrap();
    let cases = fixture["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 4);
    for case in cases {
        let (n, d) = (
            case["n"].as_u64().unwrap() as usize,
            case["d"].as_u64().unwrap() as usize,
        );
        let t = case["temperature"].as_f64().unwrap();
        let want_loss = case["loss"].as_f64().unwrap();
        for dtype in [DType::F64, DType::F32] {
            let tol = if dtype == DType::F64 { 1e-10 } else { 1e-5 };
            // From raw projections h: L2 normalisation then NT-Xent.
            let mut g = Graph::new(true);
            let h = g.variable(Tensor::from_f64(&[2 * n, d], dtype, &floats(&case["h"])));
            let z = ops::normalize::l2_normalize(&mut g, h);
            let loss = ops::ntxent::ntxent(&mut g, z, t);
            let got = g.value(loss).item();
            assert!(
                (got - want_loss).abs() <= tol * want_loss.abs().max(1.0),
                "n={n} d={d} {dtype:?}: loss {got} vs {want_loss}"
            );
            g.backward(loss);
            if n > 1 {
                let e = rel_err(&g.grad(h).unwrap().to_f64_vec(), &floats(&case["grad_h"]));
                assert!(e < tol, "n={n} d={d} {dtype:?}: grad_h off by {e:e}");
                let e = rel_err(&g.value(z).to_f64_vec(), &floats(&case["z"]));
                assert!(e < tol, "n={n} d={d} {dtype:?}: z off by {e:e}");
            }
            // From the normalised z directly.
            let mut g = Graph::new(true);
            let z = g.variable(Tensor::from_f64(&[2 * n, d], dtype, &floats(&case["z"])));
            let loss = ops::ntxent::ntxent(&mut g, z, t);
            g.backward(loss);
            let grad = g.grad(z).unwrap().to_f64_vec();
            let want = floats(&case["grad_z"]);
            if n > 1 {
                let e = rel_err(&grad, &want);
                assert!(e < tol, "n={n} d={d} {dtype:?}: grad_z off by {e:e}");
            } else {
                // One pair: the only candidate is the positive, loss and gradient are 0.
                assert!(grad.iter().all(|v| v.abs() < 1e-6) && want.iter().all(|v| *v == 0.0));
            }
        }
    }
}

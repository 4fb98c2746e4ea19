//! `dropkit::candle::DropoutAddNorm`: candle tensors get the same bits as dropkit's own
//! fused dropout + add + norm, forward (z and s) and every gradient through candle's
//! autograd (x, residual, bias, gamma, beta), for each dtype and both norms; invalid input
//! is an error that takes no offset.
#![cfg(feature = "candle")]

mod common;

use candle_core::{Device as CDevice, Tensor as CTensor, Var, WithDType};
use common::{bits_of, finite_test_data as test_data};
use dropkit::functional::{
    dropout_add_norm, dropout_add_norm_backward, AddNormConfig, AddNormInputs, AddNormSaved,
};
use dropkit::{candle as dk, Element, Generator, MaskMode, Norm, StreamPos, Tensor};
use half::{bf16, f16};
use std::sync::Arc;

fn values<T: Element + WithDType>(t: &CTensor) -> Vec<T> {
    t.flatten_all().unwrap().to_vec1::<T>().unwrap()
}

fn ctensor<T: Element + WithDType>(v: &[T], shape: &[usize]) -> CTensor {
    CTensor::from_slice(v, shape, &CDevice::Cpu).unwrap()
}

fn parity<T: Element + WithDType>(norm: Norm, with_bias: bool, train: bool) {
    let (rows, h) = (300, 37);
    let n = rows * h;
    let x = test_data::<T>(n, 1);
    let residual = test_data::<T>(n, 2);
    let bias = test_data::<T>(h, 3);
    let gamma = test_data::<T>(h, 4);
    let beta = test_data::<T>(h, 5);
    let wz = test_data::<T>(n, 6);
    let ws = test_data::<T>(n, 7);
    let layer = match norm {
        Norm::LayerNorm => dk::DropoutAddNorm::layer_norm(0.2, 1e-5),
        Norm::RmsNorm => dk::DropoutAddNorm::rms_norm(0.2, 1e-5),
    }
    .unwrap()
    .with_generator(Arc::new(Generator::new(77)));
    let is_layer = norm == Norm::LayerNorm;
    // candle: gamma, beta and bias as Vars; loss = sum(z * wz) + sum(s * ws).
    let cx = Var::from_tensor(&ctensor(&x, &[rows, h])).unwrap();
    let cres = Var::from_tensor(&ctensor(&residual, &[rows, h])).unwrap();
    let cbias = Var::from_tensor(&ctensor(&bias, &[h])).unwrap();
    let cgamma = Var::from_tensor(&ctensor(&gamma, &[h])).unwrap();
    let cbeta = Var::from_tensor(&ctensor(&beta, &[h])).unwrap();
    let (z, s) = layer
        .forward_t(
            cx.as_tensor(),
            with_bias.then_some(cbias.as_tensor()),
            cres.as_tensor(),
            cgamma.as_tensor(),
            is_layer.then_some(cbeta.as_tensor()),
            train,
        )
        .unwrap();
    let loss = (z.mul(&ctensor(&wz, &[rows, h])).unwrap().sum_all().unwrap()
        + s.mul(&ctensor(&ws, &[rows, h])).unwrap().sum_all().unwrap())
    .unwrap();
    let grads = loss.backward().unwrap();
    // dropkit at the offset the layer took (0 in training).
    let t = |v: &[T], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape).unwrap();
    let (tx, tres, tbias, tgamma, tbeta) = (
        t(&x, &[rows, h]),
        t(&residual, &[rows, h]),
        t(&bias, &[h]),
        t(&gamma, &[h]),
        t(&beta, &[h]),
    );
    let inputs = AddNormInputs {
        x: &tx,
        bias: with_bias.then_some(&tbias),
        residual: Some(&tres),
        gamma: &tgamma,
        beta: is_layer.then_some(&tbeta),
    };
    let config = AddNormConfig {
        norm,
        p: 0.2,
        eps: 1e-5,
        training: train,
    };
    let out =
        dropout_add_norm(inputs, &config, StreamPos::new(77, 0), MaskMode::Regenerate).unwrap();
    let what = format!(
        "{} {norm:?} bias={with_bias} train={train}",
        <T as Element>::DTYPE
    );
    let host = |t: &Tensor<T>| bits_of(&t.to_vec().unwrap());
    assert_eq!(bits_of(&values::<T>(&z)), host(&out.z), "z {what}");
    assert_eq!(bits_of(&values::<T>(&s)), host(&out.s), "s {what}");
    let (dz, ds) = (t(&wz, &[rows, h]), t(&ws, &[rows, h]));
    let saved = AddNormSaved {
        s: &out.s,
        gamma: &tgamma,
    };
    let g = dropout_add_norm_backward(&dz, Some(&ds), saved, &out.state).unwrap();
    let grad = |v: &Var| bits_of(&values::<T>(grads.get(v).unwrap()));
    assert_eq!(grad(&cx), host(&g.x), "dx {what}");
    assert_eq!(
        grad(&cres),
        host(g.residual.as_ref().unwrap()),
        "dresidual {what}"
    );
    assert_eq!(grad(&cgamma), host(&g.gamma), "dgamma {what}");
    if with_bias {
        assert_eq!(grad(&cbias), host(g.bias.as_ref().unwrap()), "dbias {what}");
    }
    if is_layer {
        assert_eq!(grad(&cbeta), host(g.beta.as_ref().unwrap()), "dbeta {what}");
    }
}

#[test]
fn candle_matches_dropkit_bit_for_bit() {
    for norm in [Norm::LayerNorm, Norm::RmsNorm] {
        for (with_bias, train) in [(true, true), (false, true), (true, false)] {
            parity::<f32>(norm, with_bias, train);
            parity::<bf16>(norm, with_bias, train);
        }
        parity::<f64>(norm, true, true);
        parity::<f16>(norm, true, true);
    }
}

#[test]
fn bad_input_is_an_error_and_takes_no_offset() {
    let gen = Arc::new(Generator::new(1));
    let layer = dk::DropoutAddNorm::layer_norm(0.1, 1e-5)
        .unwrap()
        .with_generator(gen.clone());
    let dev = CDevice::Cpu;
    let x = CTensor::ones((3, 4), candle_core::DType::F32, &dev).unwrap();
    let g4 = CTensor::ones(4, candle_core::DType::F32, &dev).unwrap();
    let g3 = CTensor::ones(3, candle_core::DType::F32, &dev).unwrap();
    let g4_64 = CTensor::ones(4, candle_core::DType::F64, &dev).unwrap();
    assert!(layer.forward_t(&x, None, &x, &g3, Some(&g4), true).is_err());
    assert!(layer.forward_t(&x, None, &x, &g4, None, true).is_err());
    assert!(layer
        .forward_t(&x, None, &x, &g4_64, Some(&g4), true)
        .is_err());
    assert!(layer
        .forward_t(&x, Some(&g3), &x, &g4, Some(&g4), true)
        .is_err());
    assert_eq!(gen.state().offset, 0);
    assert!(dk::DropoutAddNorm::rms_norm(0.1, -1.0).is_err());
    assert!(layer.forward_t(&x, None, &x, &g4, Some(&g4), true).is_ok());
    assert_eq!(gen.state().offset, 1);
}

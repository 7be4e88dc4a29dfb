//! Tests of [`super`].

use super::*;
use alloc::vec;

#[test]
fn round_trips() {
    let init = SchedulerInit {
        steps: 4,
        num_train_timesteps: 3,
        prediction_type: 1,
        timestep_spacing: 2,
        steps_offset: 1,
        flags: abi::FLAG_FINAL_SIGMA_MIN,
        sigma_min: 0.5,
        sigma_max: 2.0,
        alphas_cumprod: vec![0.9, 0.5, 0.1],
        params: Params {
            entries: vec![
                ("a".into(), ParamValue::Number(1.5)),
                ("b".into(), ParamValue::String("x".into())),
            ],
        },
        config_json: "{}".into(),
    };
    assert_eq!(
        SchedulerInit::decode(&init.encode().unwrap()).unwrap(),
        init
    );
    let t = Tensor {
        shape: vec![1, 3],
        data: TensorData::F32(vec![1.0, 2.0, 3.0]),
    };
    let mut buf = Vec::new();
    t.encode_into(&mut buf).unwrap();
    assert_eq!(buf.len(), Tensor::encoded_len(&[1, 3], abi::DTYPE_F32));
    t.encode_into(&mut buf).unwrap();
    assert_eq!(decode_tensors(&buf, 2).unwrap(), vec![t.clone(), t]);
    let img = Image {
        width: 1,
        height: 1,
        channels: 3,
        data: vec![1, 2, 3],
    };
    let mut buf = Vec::new();
    img.encode_into(&mut buf).unwrap();
    assert_eq!(Image::decode(&mut Reader::new(&buf)).unwrap(), img);
}

#[test]
fn short_buffers_are_errors() {
    assert!(SchedulerInit::decode(&[0; 10]).is_err());
    let mut buf = Vec::new();
    put_u32(&mut buf, 0);
    put_u32(&mut buf, 1);
    put_u32(&mut buf, u32::MAX);
    assert!(decode_tensors(&buf, 1).is_err());
}

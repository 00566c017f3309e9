use burn::tensor::{Device, Tensor};
use std::time::Instant;
fn main() {
    for (name, dev) in [("flex", Device::flex()), ("ndarray", Device::ndarray())] {
        let a = Tensor::<2>::ones([4, 4], &dev);
        let t = Instant::now();
        let mut x = a.clone();
        for _ in 0..10000 { x = x + a.clone(); }
        let _ = x.into_data();
        let small = t.elapsed().as_secs_f64() / 10000.0;
        let m = Tensor::<2>::ones([1024, 128], &dev);
        let w = Tensor::<2>::ones([128, 512], &dev);
        let _ = m.clone().matmul(w.clone()).into_data();
        let t = Instant::now();
        for _ in 0..20 { let _ = m.clone().matmul(w.clone()).into_data(); }
        let mm = t.elapsed().as_secs_f64() / 20.0;
        let m2 = Tensor::<2>::ones([256, 64], &dev);
        let w2 = Tensor::<2>::ones([64, 256], &dev);
        let t = Instant::now();
        for _ in 0..200 { let _ = m2.clone().matmul(w2.clone()).into_data(); }
        let mm2 = t.elapsed().as_secs_f64() / 200.0;
        println!("{name}: tiny add {:.1} us; matmul 1024x128x512 {:.2} ms = {:.1} GFLOP/s; 256x64x256 {:.1} us = {:.1} GFLOP/s", small*1e6, mm*1e3, 1024.0*128.0*512.0*2.0/mm/1e9, mm2*1e6, 256.0*64.0*256.0*2.0/mm2/1e9);
    }
}

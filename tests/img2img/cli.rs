//! Image to image, inpainting and outpainting through the `beeswax` binary, and its errors.

use common::command::{Dir, TestCommand};
use common::images::{max_pixel_diff, Png};
use common::{load, model_dir};

use super::*;

/// `beeswax generate --model tiny-sd --prompt "a fox" --steps 4 --seed 5 --quiet
/// --init-image <the references' picture>`, in `dir`.
fn from_picture(dir: &Dir) -> TestCommand {
    let mut cmd = dir.command();
    cmd.arg("generate")
        .arg("--model")
        .arg(model_dir("tiny-sd"))
        .args([
            "--prompt", "a fox", "--steps", "4", "--seed", "5", "--quiet",
        ])
        .arg("--init-image")
        .arg(fixture("reference/img2img/init.png"));
    cmd
}

#[test]
fn cli_image_to_image_is_reproducible_at_the_pictures_size_or_another() {
    let dir = Dir::new("cli-img2img");
    // Image-to-image at the picture's own size (96x64), twice: the same bytes.
    for name in ["a.png", "b.png"] {
        from_picture(&dir)
            .args(["--strength", "0.5", "--output", name])
            .run();
    }
    let a = dir.read("a.png");
    assert_eq!(a, dir.read("b.png"));
    let png = Png::decode(&a);
    assert_eq!(png.size(), (96, 64));
    assert!(
        png.parameters.contains("Denoising strength: 0.5"),
        "{}",
        png.parameters
    );

    // Resized to another size.
    from_picture(&dir)
        .args(["--width", "64", "--height", "64", "--resize", "crop"])
        .args(["--output", "c.png"])
        .run();
    assert_eq!(Png::read(&dir.join("c.png")).size(), (64, 64));
}

#[test]
fn cli_inpainting_only_the_masked_area_keeps_the_rest() {
    let dir = Dir::new("cli-inpaint");
    from_picture(&dir)
        .arg("--mask")
        .arg(fixture("reference/img2img/mask.png"))
        .args(["--mask-blur", "0", "--inpaint-area", "masked"])
        .args(["--inpaint-padding", "8", "--masked-content", "fill"])
        .args(["--width", "64", "--height", "64", "--output", "d.png"])
        .run();
    let got = Png::read(&dir.join("d.png")).image;
    let (init, mask) = inputs();
    assert_eq!((got.width, got.height), (96, 64));
    let masked = |x: usize, y: usize| mask.data[y * 96 + x] > 0.0;
    assert_eq!(changed_pixels(&got, &init, 1, |x, y| !masked(x, y)), 0);
    assert!(changed_pixels(&got, &init, 1, masked) > 0);
}

#[test]
fn cli_outpainting_keeps_the_old_picture_away_from_the_seam() {
    let dir = Dir::new("cli-outpaint");
    // Outpainting 32 pixels to the right: a 128x64 picture whose old part is kept
    // (the mask reaches 2 x blur = 4 pixels into it).
    from_picture(&dir)
        .args([
            "--outpaint",
            "0,32,0,0",
            "--mask-blur",
            "2",
            "--strength",
            "1",
        ])
        .args(["--output", "e.png"])
        .run();
    let got = Png::read(&dir.join("e.png")).image;
    assert_eq!((got.width, got.height), (128, 64));
    let (init, _) = inputs();
    let mut kept = true;
    for y in 0..64 {
        for x in 0..96 - 4 - 5 {
            let (i, j) = ((y * 128 + x) * 3, (y * 96 + x) * 3);
            kept &= got.data[i..i + 3] == init.data[j..j + 3];
        }
    }
    assert!(
        kept,
        "outpainting changed the old picture away from the seam"
    );
}

#[test]
fn cli_init_noise_gives_the_diffusers_reference_image() {
    let dir = Dir::new("cli-init-noise");
    // --init-noise: the diffusers reference's noise gives the reference's image.
    let r = load("reference/img2img/img2img_tiny-sd_ddim_s0.3.safetensors");
    let noise_file = dir.join("noise.safetensors");
    let noise = HashMap::from([("noise".to_string(), r["noise"].clone())]);
    candle_core::safetensors::save(&noise, &noise_file).unwrap();
    dir.command()
        .arg("generate")
        .arg("--model")
        .arg(model_dir("tiny-sd"))
        .args(["--prompt", "a red fox in the snow"])
        .args(["--negative-prompt", "blurry, low quality", "--steps", "10"])
        .args(["--guidance", "7.5", "--scheduler", "ddim", "--quiet"])
        .arg("--init-image")
        .arg(fixture("reference/img2img/init.png"))
        .args(["--strength", "0.3", "--init-noise"])
        .arg(&noise_file)
        .args(["--output", "f.png"])
        .run();
    let got = Png::read(&dir.join("f.png")).image;
    let diff = max_pixel_diff(&got, &r["image"].get(0).unwrap());
    assert!(diff <= 2.0, "{diff}/255 from the reference");
}

#[test]
fn cli_errors_name_the_input() {
    let dir = Dir::new("cli-img2img-errors");
    let init = fixture("reference/img2img/init.png");
    let init = init.to_str().unwrap();
    dir.create("junk.png", b"not a picture");
    let square = RgbImage {
        width: 8,
        height: 8,
        data: vec![255; 8 * 8 * 3],
    };
    beeswax::image_out::write_png(&dir.join("square.png"), &square, "").unwrap();
    let fifo = std::process::Command::new("mkfifo")
        .arg(dir.join("fifo.png"))
        .status();
    assert!(fifo.unwrap().success(), "mkfifo");
    for (args, words) in [
        (
            vec!["--init-image", "missing.png"],
            vec!["--init-image", "missing.png"],
        ),
        (
            vec!["--init-image", "junk.png"],
            vec!["--init-image", "junk.png", "not a readable"],
        ),
        (
            vec!["--init-image", init, "--mask", "square.png"],
            vec!["aspect ratios differ"],
        ),
        (
            vec!["--init-image", init, "--strength", "1.5"],
            vec!["--strength", "at most 1"],
        ),
        (vec!["--strength", "0.5"], vec!["--init-image"]),
        // Devices and FIFOs are refused before reading (they read without end or hang).
        (
            vec!["--init-image", "/dev/zero"],
            vec!["--init-image", "/dev/zero", "not a regular file"],
        ),
        (
            vec!["--init-image", "fifo.png"],
            vec!["--init-image", "fifo.png", "is a FIFO"],
        ),
        (
            vec!["--init-image", init, "--outpaint", "1,2"],
            vec!["left,right,top,bottom"],
        ),
    ] {
        dir.command()
            .arg("generate")
            .arg("--model")
            .arg(model_dir("tiny-sd"))
            .args(["--prompt", "x", "--steps", "2", "--quiet"])
            .args(&args)
            .assert_fails_with(&words);
    }
}

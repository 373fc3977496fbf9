//! The meta-teacher: its meta-gradient against a finite difference of the whole bilevel
//! objective (f64, proptest over sizes, seeds and pilot steps), its schedule (period, freeze),
//! save/restore, and its errors.

mod common;

use burn::module::{Module, Param};
use burn::nn::Linear;
use burn::optim::{AdamConfig, GradientsParams, SgdConfig};
use burn::tensor::{Int, Tensor};
use burn_distill::meta::{Batch, MetaTeacher, MetaTeacherConfig, PilotRate};
use burn_distill::prelude::*;
use burn_distill::{Distillable, LossSum};
use common::*;
use proptest::prelude::*;

/// An MLP of the given widths whose parameters are `flat` (per layer: weight `[in, out]`
/// row-major, then bias).
fn net(widths: &[usize], flat: &[f64]) -> Net {
    let mut at = 0;
    let mut take = |n: usize| {
        at += n;
        flat[at - n..at].to_vec()
    };
    let layers = widths
        .windows(2)
        .map(|w| Linear {
            weight: Param::from_tensor(f64t(take(w[0] * w[1]), [w[0], w[1]])),
            bias: Some(Param::from_tensor(f64t(take(w[1]), [w[1]]))),
        })
        .collect();
    Net { layers }
}

fn size(widths: &[usize]) -> usize {
    widths.windows(2).map(|w| w[0] * w[1] + w[1]).sum()
}

/// A module's gradients flattened in the order of [`net`].
fn flat_grads(net: &Net, g: &GradientsParams) -> Vec<f64> {
    let mut out = Vec::new();
    for layer in &net.layers {
        out.extend(values(
            g.get::<2>(layer.weight.id).expect("weight gradient"),
        ));
        out.extend(values(
            g.get::<1>(layer.bias.as_ref().unwrap().id)
                .expect("bias gradient"),
        ));
    }
    out
}

fn labels(seed: u64, n: usize, c: usize) -> Tensor<1, Int> {
    ints(
        noise(seed, n, 1.0)
            .iter()
            .map(|v| ((v + 1.0) / 2.0 * c as f64) as i64 % c as i64)
            .collect(),
    )
}

fn kd_loss() -> LossSum {
    let kd = KdConfig::new().with_temperature(2.0).init().unwrap();
    CrossEntropyConfig::new().init().unwrap().weighted(0.3) + kd.weighted(0.7)
}

/// The bilevel objective by its definition: `k` plain SGD steps of the student on the
/// distillation loss `loss` (teacher fixed), then the quiz cross-entropy.
fn bilevel<M: Distillable<Input = Tensor<2>>, T: Distillable<Input = Tensor<2>>>(
    loss: &dyn Loss,
    student: &M,
    teacher: &T,
    batch: &Batch<Tensor<2>>,
    quiz: &Batch<Tensor<2>>,
    eta: f64,
    steps: usize,
) -> f64 {
    let mut s = student.clone();
    for _ in 0..steps {
        let input = DistillInput::from_outputs(s.run(&batch.input), teacher.run(&batch.input))
            .targets(batch.targets.clone());
        let grads = GradientsParams::from_grads(loss.forward(&input).unwrap().total.backward(), &s);
        s = SgdConfig::new().init().step(eta, s, grads);
    }
    let quiz_input = DistillInput::student(s.run(&quiz.input).logits).targets(quiz.targets.clone());
    CrossEntropyConfig::new()
        .init()
        .unwrap()
        .forward(&quiz_input)
        .unwrap()
        .value()
}

#[derive(Debug, Clone)]
struct Problem {
    seed: u64,
    input: usize,
    hidden: usize,
    classes: usize,
    rows: usize,
    steps: usize,
}

fn problem() -> impl Strategy<Value = Problem> {
    (
        any::<u64>(),
        2usize..5,
        2usize..6,
        2usize..5,
        2usize..6,
        1usize..3,
    )
        .prop_map(|(seed, input, hidden, classes, rows, steps)| Problem {
            seed,
            input,
            hidden,
            classes,
            rows,
            steps,
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(10))]

    /// d quiz / d teacher from the meta-teacher equals a central difference of the bilevel
    /// objective in every teacher parameter, through one and two pilot steps (MLP student
    /// input-hidden-classes, tanh teacher input-hidden+2-classes), to 1e-5 relative.
    #[test]
    fn meta_gradient_matches_bilevel_finite_difference(p in problem()) {
        configure_f64();
        let s_widths = [p.input, p.hidden, p.classes];
        let t_widths = [p.input, p.hidden + 2, p.classes];
        let student = net(&s_widths, &noise(p.seed, size(&s_widths), 0.8));
        let theta_t = noise(p.seed ^ 1, size(&t_widths), 1.5);
        let x = |seed, n| f64t(noise(seed, n * p.input, 2.0), [n, p.input]);
        let batch = Batch::new(x(p.seed ^ 2, p.rows), labels(p.seed ^ 3, p.rows, p.classes));
        let quiz = Batch::new(x(p.seed ^ 4, p.rows + 1), labels(p.seed ^ 5, p.rows + 1, p.classes));
        let eta = 0.5;

        let meta = MetaTeacherConfig::new()
            .with_pilot_rate(PilotRate::Fixed(eta))
            .with_pilot_steps(p.steps)
            .init(net(&t_widths, &theta_t), SgdConfig::new().init(), kd_loss())
            .unwrap();
        let g = meta
            .meta_gradient(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
            .unwrap();
        let got = flat_grads(meta.teacher(), &g.teacher);
        let q0 = bilevel(&kd_loss(), &student, &net(&t_widths, &theta_t), &batch, &quiz, eta, p.steps);
        prop_assert!((g.quiz_loss - q0).abs() <= 1e-12 * q0.abs().max(1.0));

        let h = 1e-5;
        let want = numeric_grad(
            &|theta| bilevel(&kd_loss(), &student, &net(&t_widths, &theta), &batch, &quiz, eta, p.steps),
            &theta_t,
            h,
        );
        let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        prop_assert!(scale > 0.0, "the teacher gets a signal");
        if let Err(msg) = close("d quiz/d teacher", &got, &want, 1e-5, 1e-8 * scale) {
            prop_assert!(false, "{msg} ({p:?})");
        }
    }
}

/// A net that also exposes its first hidden layer (after tanh) as the feature tap `hidden`.
#[derive(Module, Debug)]
struct Tapped {
    net: Net,
}

impl Distillable for Tapped {
    type Input = Tensor<2>;
    fn run(&self, x: &Tensor<2>) -> burn_distill::Outputs {
        let hidden = burn::tensor::activation::tanh(self.net.layers[0].forward(x.clone()));
        self.net.run(x).feature("hidden", hidden)
    }
}

/// A hint loss on the `hidden` tap: mean squared difference (a stand-in for the feature
/// objectives, to check that taps carry the meta-gradient).
#[derive(Debug)]
struct HiddenMse;

impl Loss for HiddenMse {
    fn name(&self) -> &str {
        "hidden_mse"
    }
    fn forward(&self, input: &DistillInput) -> Result<burn_distill::LossOutput, DistillError> {
        match input.of("hidden_mse").feature("hidden")? {
            (burn_distill::Feature::Embedding(s), burn_distill::Feature::Embedding(t)) => Ok(
                burn_distill::LossOutput::single("hidden_mse", (s - t).square().mean()),
            ),
            _ => unreachable!("the test taps embeddings"),
        }
    }
}

/// With a loss that also reads a teacher feature tap, the meta-gradient still matches the
/// bilevel finite difference: the tap's gradient goes through the teacher too.
#[test]
fn feature_taps_carry_the_meta_gradient() {
    configure_f64();
    let (s_w, t_w) = ([3, 4, 3], [3, 4, 3]);
    let loss = || kd_loss() + HiddenMse.weighted(2.0);
    let student = Tapped {
        net: net(&s_w, &noise(21, size(&s_w), 0.7)),
    };
    let theta_t = noise(22, size(&t_w), 1.2);
    let batch = Batch::new(f64t(noise(23, 15, 1.5), [5, 3]), labels(24, 5, 3));
    let quiz = Batch::new(f64t(noise(25, 12, 1.5), [4, 3]), labels(26, 4, 3));
    let teacher = |theta: &[f64]| Tapped {
        net: net(&t_w, theta),
    };
    let meta = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(0.5))
        .init(teacher(&theta_t), SgdConfig::new().init(), loss())
        .unwrap();
    let g = meta
        .meta_gradient(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
        .unwrap();
    let got = flat_grads(&meta.teacher().net, &g.teacher);
    let want = numeric_grad(
        &|theta| bilevel(&loss(), &student, &teacher(&theta), &batch, &quiz, 0.5, 1),
        &theta_t,
        1e-5,
    );
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    close(
        "d quiz/d teacher (with a tap)",
        &got,
        &want,
        1e-5,
        1e-8 * scale,
    )
    .unwrap();
    // and the tap matters: without it the gradient differs
    let plain = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(0.5))
        .init(teacher(&theta_t), SgdConfig::new().init(), kd_loss())
        .unwrap();
    let g0 = plain
        .meta_gradient(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
        .unwrap();
    assert!(
        close(
            "",
            &flat_grads(&plain.teacher().net, &g0.teacher),
            &want,
            1e-3,
            0.0
        )
        .is_err()
    );
}

fn tiny() -> (Net, Net, Batch<Tensor<2>>, Batch<Tensor<2>>) {
    let (s_w, t_w) = ([4, 3], [4, 6, 3]);
    let student = net(&s_w, &noise(11, size(&s_w), 0.5));
    let teacher = net(&t_w, &noise(12, size(&t_w), 0.8));
    let batch = Batch::new(f64t(noise(13, 20, 1.0), [5, 4]), labels(14, 5, 3));
    let quiz = Batch::new(f64t(noise(15, 16, 1.0), [4, 4]), labels(16, 4, 3));
    (student, teacher, batch, quiz)
}

fn teacher_values(meta: &MetaTeacher<Net>) -> Vec<f64> {
    meta.teacher()
        .layers
        .iter()
        .flat_map(|l| values(l.weight.val()))
        .collect()
}

#[test]
fn sgd_round_moves_the_teacher_by_lr_times_the_meta_gradient() {
    configure_f64();
    let (student, teacher, batch, quiz) = tiny();
    let mut meta = MetaTeacherConfig::new()
        .with_teacher_lr(0.1)
        .init(teacher, SgdConfig::new().init(), kd_loss())
        .unwrap();
    let before = teacher_values(&meta);
    let g = meta
        .meta_gradient(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
        .unwrap();
    let step: Vec<f64> = meta
        .teacher()
        .layers
        .iter()
        .flat_map(|l| values(g.teacher.get::<2>(l.weight.id).unwrap()))
        .collect();
    let round = meta
        .round(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
        .unwrap();
    assert!(round.updated);
    assert_eq!(round.quiz_loss, Some(g.quiz_loss));
    let want: Vec<f64> = before.iter().zip(&step).map(|(w, g)| w - 0.1 * g).collect();
    close(
        "teacher after one round",
        &teacher_values(&meta),
        &want,
        1e-12,
        1e-15,
    )
    .unwrap();
}

#[test]
fn period_and_freeze_skip_rounds() {
    configure_f64();
    let (student, teacher, batch, quiz) = tiny();
    let mut meta = MetaTeacherConfig::new()
        .with_period(2)
        .with_freeze_epochs(1)
        .init(teacher, SgdConfig::new().init(), kd_loss())
        .unwrap();
    let at = |e| Progress::epoch(e, 4);
    let frozen = teacher_values(&meta);
    // epoch 0: frozen, whatever the period
    for _ in 0..2 {
        let r = meta.round(&student, &batch, &quiz, at(0), 0.0).unwrap();
        assert!(!r.updated && r.quiz_loss.is_none());
    }
    assert_eq!(teacher_values(&meta), frozen);
    // epoch 1: rounds 2 and 4 update, round 3 does not
    let updates: Vec<bool> = (0..3)
        .map(|_| {
            meta.round(&student, &batch, &quiz, at(1), 0.0)
                .unwrap()
                .updated
        })
        .collect();
    assert_eq!(updates, [true, false, true]);
    assert_eq!(meta.rounds(), 5);
    assert_ne!(teacher_values(&meta), frozen);
}

#[test]
fn student_lr_drives_the_pilot_step() {
    configure_f64();
    let (student, teacher, batch, quiz) = tiny();
    let fixed = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(0.3))
        .init(teacher.clone(), SgdConfig::new().init(), kd_loss())
        .unwrap();
    let follow = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::StudentLr)
        .init(teacher, SgdConfig::new().init(), kd_loss())
        .unwrap();
    let p = Progress::epoch(0, 1);
    let a = fixed
        .meta_gradient(&student, &batch, &quiz, p, 123.0)
        .unwrap();
    let b = follow
        .meta_gradient(&student, &batch, &quiz, p, 0.3)
        .unwrap();
    assert_eq!(a.quiz_loss, b.quiz_loss);
    assert!(matches!(
        follow.meta_gradient(&student, &batch, &quiz, p, 0.0),
        Err(DistillError::InvalidConfig { .. })
    ));
}

/// A meta-teacher with Adam (stateful) on `teacher`, two rounds into `tiny()`'s problem when
/// `rounds` is 2; with a fresh teacher (another init) and no round, what a restore starts from.
fn adam_meta(teacher: Net, rounds: usize) -> MetaTeacher<Net> {
    let (student, _, batch, quiz) = tiny();
    let mut meta = MetaTeacherConfig::new()
        .with_teacher_lr(0.01)
        .init(teacher, AdamConfig::new().init(), kd_loss())
        .unwrap();
    for _ in 0..rounds {
        meta.round(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
            .unwrap();
    }
    meta
}

fn fresh_teacher() -> Net {
    net(&[4, 6, 3], &noise(99, size(&[4, 6, 3]), 0.8))
}

/// Three more rounds of `meta` and `restored` give the same results and teachers.
fn continue_alike(mut meta: MetaTeacher<Net>, mut restored: MetaTeacher<Net>) {
    let (student, _, batch, quiz) = tiny();
    let p = Progress::epoch(0, 1);
    assert_eq!(restored.rounds(), meta.rounds());
    assert_eq!(teacher_values(&restored), teacher_values(&meta));
    for _ in 0..3 {
        let a = meta.round(&student, &batch, &quiz, p, 0.0).unwrap();
        let b = restored.round(&student, &batch, &quiz, p, 0.0).unwrap();
        assert_eq!(a, b);
        assert_eq!(teacher_values(&restored), teacher_values(&meta));
    }
}

/// Save after two rounds with Adam (which has state), restore into a freshly initialised
/// meta-teacher, and the next three rounds give bit-identical teachers.
///
/// burn 0.22.1 materialises a loaded optimizer state in the default device's float dtype, so
/// an f64 run configures that device for F64 first (as an f64 trainer would).
#[test]
fn restored_meta_teacher_continues_bit_identically() {
    configure_f64();
    let meta = adam_meta(tiny().1, 2);
    let record = meta.to_record();
    let teacher_bytes = record.teacher.into_bytes().unwrap();
    let optimizer_bytes = record.optimizer.into_bytes().unwrap();
    let restored = adam_meta(fresh_teacher(), 0)
        .load_record(burn_distill::meta::MetaTeacherRecord {
            teacher: burn::store::ModuleRecord::from_bytes(teacher_bytes).unwrap(),
            optimizer: burn::optim::OptimizerRecord::from_bytes(optimizer_bytes).unwrap(),
            rounds: record.rounds,
        })
        .unwrap();
    assert_eq!(restored.rounds(), 2);
    continue_alike(meta, restored);
}

/// `save`/`load`: the whole state in one file; the restored meta-teacher continues exactly;
/// damaged, unfinished and mismatched files are `InvalidRecord`.
#[test]
fn a_saved_meta_teacher_loads_from_one_file() {
    configure_f64();
    let meta = adam_meta(tiny().1, 2);
    let dir = std::env::temp_dir().join(format!("burn-distill-meta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("meta.state");
    // into a directory that does not exist: a save error that names the path (it said
    // "cannot load the … record")
    let missing = dir.join("no-such-dir").join("meta.state");
    let err = meta.save(&missing).unwrap_err();
    assert!(
        matches!(&err, DistillError::Save { path, .. } if path.contains("no-such-dir")),
        "{err}"
    );
    assert!(!err.to_string().contains("load"), "{err}");
    meta.save(&path).unwrap();
    assert!(!dir.join("meta.state.partial").exists());
    let fresh = || adam_meta(fresh_teacher(), 0);
    let restored = fresh().load(&path).unwrap();
    assert_eq!(restored.rounds(), 2);
    continue_alike(meta, restored);

    let good = std::fs::read(&path).unwrap();
    let reason = |bytes: &[u8]| {
        let copy = dir.join("copy.state");
        std::fs::write(&copy, bytes).unwrap();
        match fresh().load(&copy) {
            Err(DistillError::InvalidRecord { reason, .. }) => reason,
            other => panic!("expected InvalidRecord, got {other:?}"),
        }
    };
    assert!(reason(&good[..good.len() - 1]).contains("truncated"));
    assert!(reason(&good[..5]).contains("truncated"));
    let mut corrupt = good.clone();
    let last = corrupt.len() - 3;
    corrupt[last] ^= 0x40;
    assert!(
        reason(&corrupt).contains("fails its checksum"),
        "{}",
        reason(&corrupt)
    );
    assert!(reason(b"something else entirely").contains("not a burn-distill state file"));
    // a teacher of another shape refuses the record
    let other = adam_meta(net(&[4, 5, 3], &noise(98, size(&[4, 5, 3]), 0.8)), 0);
    assert!(matches!(
        other.load(&path),
        Err(DistillError::InvalidRecord { .. })
    ));
    assert!(matches!(
        fresh().load(dir.join("absent.state")),
        Err(DistillError::InvalidRecord { .. })
    ));
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn config_errors_surface_at_init() {
    configure_f64();
    let (_, teacher, ..) = tiny();
    let init = |c: MetaTeacherConfig| c.init(teacher.clone(), SgdConfig::new().init(), kd_loss());
    let invalid = |r: Result<MetaTeacher<Net>, DistillError>, field: &str| match r {
        Err(DistillError::InvalidConfig { field: f, .. }) => assert_eq!(f, field),
        other => panic!("expected an error on {field}, got {other:?}"),
    };
    invalid(
        init(MetaTeacherConfig::new().with_pilot_rate(PilotRate::Fixed(0.0))),
        "pilot_rate",
    );
    invalid(
        init(MetaTeacherConfig::new().with_pilot_rate(PilotRate::Fixed(-1.0))),
        "pilot_rate",
    );
    invalid(
        init(MetaTeacherConfig::new().with_fd_step(Some(0.0))),
        "fd_step",
    );
    invalid(
        init(MetaTeacherConfig::new().with_teacher_lr(f64::NAN)),
        "teacher_lr",
    );
    invalid(
        init(MetaTeacherConfig::new().with_pilot_steps(0)),
        "pilot_steps",
    );
    invalid(init(MetaTeacherConfig::new().with_period(0)), "period");
    let frozen = MetaTeacherConfig::new().init(
        teacher.clone().no_grad(),
        SgdConfig::new().init(),
        kd_loss(),
    );
    assert!(matches!(frozen, Err(DistillError::NothingToTrain { .. })));
}

#[test]
fn quiz_batches_that_do_not_fit_are_errors() {
    configure_f64();
    let (student, teacher, batch, quiz) = tiny();
    let mut meta = MetaTeacherConfig::new()
        .init(teacher, SgdConfig::new().init(), kd_loss())
        .unwrap();
    let p = Progress::epoch(0, 1);
    let bad_targets = Batch::new(quiz.input.clone(), ints(vec![0, 1, 2, 3]));
    assert_eq!(
        meta.round(&student, &batch, &bad_targets, p, 0.0),
        Err(DistillError::TargetOutOfRange {
            objective: "ce".into(),
            target: 3,
            classes: 3
        })
    );
    let short = Batch::new(quiz.input.clone(), ints(vec![0, 1]));
    assert!(matches!(
        meta.round(&student, &batch, &short, p, 0.0),
        Err(DistillError::ShapeMismatch { .. })
    ));
    // a student with another class count than the teacher
    let wide = net(&[4, 5], &noise(3, size(&[4, 5]), 0.5));
    assert_eq!(
        meta.round(&wide, &batch, &quiz, p, 0.0),
        Err(DistillError::ClassMismatch {
            objective: "kd".into(),
            student: 5,
            teacher: 3
        })
    );
}

/// Decoupled MetaDistil is the meta-teacher driving CE + DKD; its round runs and its teacher
/// gradient is finite where the reference DKD's is NaN (the target masked by −1000).
#[test]
fn decoupled_metadistil_runs_and_stays_finite() {
    configure_f64();
    let (student, teacher, batch, quiz) = tiny();
    let dkd = DkdConfig::new().with_warmup_epochs(0).init().unwrap();
    let mut meta = MetaTeacher::decoupled(
        &MetaTeacherConfig::new(),
        teacher,
        SgdConfig::new().init(),
        dkd,
    )
    .unwrap();
    assert_eq!(meta.loss().name(), "sum");
    let before = teacher_values(&meta);
    let r = meta
        .round(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
        .unwrap();
    assert!(r.quiz_loss.unwrap().is_finite());
    let after = teacher_values(&meta);
    assert!(after.iter().all(|v| v.is_finite()));
    assert_ne!(after, before);
    let out = meta
        .student_loss(student.run(&batch.input), &batch, Progress::epoch(0, 1))
        .unwrap();
    let names: Vec<String> = out.values().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["ce", "dkd/tckd", "dkd/nckd"]);
}

/// SoKD's DAFA trained bi-level: a meta-teacher over an `Augmented` teacher (its own weights
/// frozen) gives d quiz / d DAFA parameters equal to a central difference of the bilevel
/// objective.
#[test]
fn dafa_meta_gradient_matches_bilevel_finite_difference() {
    use burn_distill::feature::{Augmented, Dafa, DafaConfig};
    configure_f64();
    let (s_w, t_w) = ([3, 4, 3], [3, 4, 3]);
    let loss = || kd_loss() + HiddenMse.weighted(2.0);
    let student = Tapped {
        net: net(&s_w, &noise(31, size(&s_w), 0.7)),
    };
    let frozen = Tapped {
        net: net(&t_w, &noise(32, size(&t_w), 1.2)),
    }
    .no_grad();
    let batch = Batch::new(f64t(noise(33, 15, 1.5), [5, 3]), labels(34, 5, 3));
    let quiz = Batch::new(f64t(noise(35, 12, 1.5), [4, 3]), labels(36, 4, 3));
    let theta0 = vec![1.0, 0.2, -0.1, 0.3, 0.0, 0.4, 0.3, 0.5, 0.2];
    let dafa = |theta: &[f64]| -> Dafa {
        let mut d = DafaConfig::new()
            .with_features(vec!["hidden".into()])
            .with_drop(0.3)
            .init(&device())
            .unwrap();
        d.weights = Param::from_tensor(f64t(theta[..5].to_vec(), [5]));
        d.magnitudes = Param::from_tensor(f64t(theta[5..].to_vec(), [4]));
        d
    };
    let teacher = |theta: &[f64]| Augmented::new(frozen.clone(), dafa(theta)).with_key(7);
    let meta = MetaTeacherConfig::new()
        .with_pilot_rate(PilotRate::Fixed(0.5))
        .init(teacher(&theta0), SgdConfig::new().init(), loss())
        .unwrap();
    let g = meta
        .meta_gradient(&student, &batch, &quiz, Progress::epoch(0, 1), 0.0)
        .unwrap();
    let d = &meta.teacher().dafa;
    let mut got = values(g.teacher.get::<1>(d.weights.id).expect("mixture gradient"));
    got.extend(values(
        g.teacher
            .get::<1>(d.magnitudes.id)
            .expect("magnitude gradient"),
    ));
    assert!(
        meta.teacher()
            .teacher
            .net
            .layers
            .iter()
            .all(|l| g.teacher.get::<2>(l.weight.id).is_none()),
        "the frozen teacher gets no gradient"
    );
    let want = numeric_grad(
        &|theta| bilevel(&loss(), &student, &teacher(&theta), &batch, &quiz, 0.5, 1),
        &theta0,
        1e-5,
    );
    let scale = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    assert!(scale > 0.0);
    close("d quiz/d dafa", &got, &want, 1e-5, 1e-8 * scale).unwrap();
}

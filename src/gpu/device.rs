//! The GPU device: adapter and device set-up with the reason it failed, if it did, and
//! what the adapter can do (f16, limits). One context serves every model of a process
//! (natively: [`shared`]), so pipelines and pooled buffers are reused across models.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Why the GPU backend is not used; recorded by `backend: auto` and printed by `info`.
#[derive(Debug, Clone, PartialEq)]
pub enum Unavailable {
    /// This build has no GPU backend (feature `webgpu` off).
    NotBuilt,
    /// No WebGPU in this JS environment (`navigator.gpu` is missing: Workers, Node).
    NoNavigatorGpu,
    NoAdapter(String),
    /// The device request failed.
    NoDevice(String),
    /// A limit the kernels need is below what they use.
    LimitTooSmall(String),
    /// The device was lost; the model runs on the CPU from then on.
    DeviceLost(String),
    /// The caller asked for the CPU.
    CpuRequested,
}

impl fmt::Display for Unavailable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unavailable::NotBuilt => write!(f, "this build has no WebGPU backend"),
            Unavailable::NoNavigatorGpu => write!(f, "no navigator.gpu in this environment"),
            Unavailable::NoAdapter(s) => write!(f, "no GPU adapter: {s}"),
            Unavailable::NoDevice(s) => write!(f, "the GPU device could not be created: {s}"),
            Unavailable::LimitTooSmall(s) => write!(f, "GPU limit too small: {s}"),
            Unavailable::DeviceLost(s) => write!(f, "the GPU device was lost: {s}"),
            Unavailable::CpuRequested => write!(f, "the CPU backend was requested"),
        }
    }
}

/// What the adapter is, for `info` and the JS API.
#[derive(Debug, Clone)]
pub struct AdapterSummary {
    pub name: String,
    pub backend: String,
    pub device_type: String,
    pub driver: String,
    pub shader_f16: bool,
    pub max_storage_buffer_binding_size: u64,
}

impl fmt::Display for AdapterSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}, {}{}{})",
            self.name,
            self.backend,
            self.device_type,
            if self.driver.is_empty() { "" } else { ", " },
            self.driver
        )?;
        if self.shader_f16 {
            write!(f, ", shader-f16")?;
        }
        Ok(())
    }
}

/// Storage buffers below this many bytes are refused at set-up: the kernels bind whole
/// tensors, and WebGPU guarantees 128 MiB.
const MIN_STORAGE_BINDING: u64 = 64 << 20;

/// A device, its queue, and what is cached on it.
pub struct GpuContext {
    pub device: wgpu::Device,
    pub queue: wgpu::Queue,
    pub summary: AdapterSummary,
    pub max_binding: u64,
    pub max_workgroups: u32,
    /// Set by the device-lost callback or when an error scope reports an internal or
    /// out-of-memory error; a lost context is never used again.
    lost: Arc<AtomicBool>,
    lost_reason: Arc<Mutex<String>>,
    /// Validation errors nobody scoped (should not happen; recorded instead of the
    /// default handler's panic, and turned into an error by the next run).
    uncaptured: Arc<Mutex<Vec<String>>>,
    pub(crate) pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
    pub(crate) pool: Arc<super::tensor::Pool>,
    /// WGSL `dot4I8Packed` is available (language extension
    /// `packed_4x8_integer_dot_product`) and not turned off (`EDGEPREDICT_GPU_DOT4=0`, or
    /// [`GpuContext::set_packed_dot`]): the int8 kernels lowered from then on use it.
    packed_dot: AtomicBool,
    packed_dot_available: bool,
}

impl fmt::Debug for GpuContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GpuContext({})", self.summary)
    }
}

impl GpuContext {
    /// Requests an adapter and a device. Never panics: every failure is a reason.
    pub async fn new() -> Result<GpuContext, Unavailable> {
        #[cfg(target_arch = "wasm32")]
        if !super::web::has_navigator_gpu() {
            return Err(Unavailable::NoNavigatorGpu);
        }
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        #[cfg(not(target_arch = "wasm32"))]
        if std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::GL;
        }
        #[cfg(target_arch = "wasm32")]
        {
            desc.backends = wgpu::Backends::BROWSER_WEBGPU;
        }
        let instance = wgpu::Instance::new(desc);
        let packed_dot_available = instance
            .wgsl_language_features()
            .contains(wgpu::WgslLanguageFeatures::Packed4x8IntegerDotProduct);
        #[cfg(not(target_arch = "wasm32"))]
        let packed_dot_on = std::env::var("EDGEPREDICT_GPU_DOT4").map_or(true, |v| v != "0");
        #[cfg(target_arch = "wasm32")]
        let packed_dot_on = true;
        let adapter = instance
            .request_adapter(&wgpu::RequestAdapterOptions {
                power_preference: wgpu::PowerPreference::HighPerformance,
                force_fallback_adapter: false,
                compatible_surface: None,
                ..Default::default()
            })
            .await
            .map_err(|e| Unavailable::NoAdapter(e.to_string()))?;
        let info = adapter.get_info();
        let alimits = adapter.limits();
        let max_binding = alimits
            .max_storage_buffer_binding_size
            .min(alimits.max_buffer_size);
        if max_binding < MIN_STORAGE_BINDING {
            return Err(Unavailable::LimitTooSmall(format!(
                "max storage buffer binding {max_binding} bytes (need {MIN_STORAGE_BINDING})"
            )));
        }
        if alimits.max_storage_buffers_per_shader_stage < 8 {
            return Err(Unavailable::LimitTooSmall(format!(
                "{} storage buffers per shader stage (need 8)",
                alimits.max_storage_buffers_per_shader_stage
            )));
        }
        let f16 = adapter.features().contains(wgpu::Features::SHADER_F16);
        let mut limits = wgpu::Limits::downlevel_defaults();
        limits.max_storage_buffer_binding_size = max_binding;
        limits.max_buffer_size = alimits.max_buffer_size;
        limits.max_storage_buffers_per_shader_stage = 8;
        limits.max_compute_workgroup_storage_size = alimits.max_compute_workgroup_storage_size;
        limits.max_compute_invocations_per_workgroup =
            alimits.max_compute_invocations_per_workgroup.min(256);
        limits.max_compute_workgroup_size_x = alimits.max_compute_workgroup_size_x.min(256);
        limits.max_compute_workgroup_size_y = alimits.max_compute_workgroup_size_y.min(256);
        if limits.max_compute_invocations_per_workgroup < 256
            || limits.max_compute_workgroup_storage_size < 16384
        {
            return Err(Unavailable::LimitTooSmall(format!(
                "{} invocations per workgroup, {} bytes workgroup memory (need 256, 16384)",
                limits.max_compute_invocations_per_workgroup,
                limits.max_compute_workgroup_storage_size
            )));
        }
        let required_features = if f16 {
            wgpu::Features::SHADER_F16
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = adapter
            .request_device(&wgpu::DeviceDescriptor {
                label: Some("edgepredict"),
                required_features,
                required_limits: limits.clone(),
                ..Default::default()
            })
            .await
            .map_err(|e| Unavailable::NoDevice(e.to_string()))?;
        let lost = Arc::new(AtomicBool::new(false));
        let lost_reason = Arc::new(Mutex::new(String::new()));
        {
            let (lost, why) = (lost.clone(), lost_reason.clone());
            device.set_device_lost_callback(move |reason, msg| {
                lost.store(true, Ordering::SeqCst);
                if let Ok(mut w) = why.lock() {
                    *w = format!("{reason:?}: {msg}");
                }
            });
        }
        let uncaptured = Arc::new(Mutex::new(Vec::new()));
        {
            let sink = uncaptured.clone();
            device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
                if let Ok(mut v) = sink.lock() {
                    v.push(e.to_string());
                }
            }));
        }
        let summary = AdapterSummary {
            name: info.name.clone(),
            backend: format!("{:?}", info.backend),
            device_type: format!("{:?}", info.device_type),
            driver: [info.driver.as_str(), info.driver_info.as_str()]
                .iter()
                .filter(|s| !s.is_empty())
                .copied()
                .collect::<Vec<_>>()
                .join(" "),
            shader_f16: f16,
            max_storage_buffer_binding_size: max_binding,
        };
        Ok(GpuContext {
            device,
            queue,
            summary,
            max_binding,
            max_workgroups: limits.max_compute_workgroups_per_dimension,
            lost,
            lost_reason,
            uncaptured,
            pipelines: Mutex::new(HashMap::new()),
            pool: Arc::new(super::tensor::Pool::default()),
            packed_dot: AtomicBool::new(packed_dot_available && packed_dot_on),
            packed_dot_available,
        })
    }

    /// Whether int8 kernels lowered now use WGSL's packed dot product (`dot4I8Packed`)
    /// rather than unpacking bytes.
    pub fn packed_dot(&self) -> bool {
        self.packed_dot.load(Ordering::SeqCst)
    }

    /// Turns the packed dot product on or off for kernels lowered from now on (on only
    /// where the adapter's WGSL offers it); returns whether it is on.
    pub fn set_packed_dot(&self, on: bool) -> bool {
        let on = on && self.packed_dot_available;
        self.packed_dot.store(on, Ordering::SeqCst);
        on
    }

    /// None while the device is usable; the reason once it was lost.
    pub fn lost(&self) -> Option<String> {
        if self.lost.load(Ordering::SeqCst) {
            Some(
                self.lost_reason
                    .lock()
                    .map(|s| s.clone())
                    .unwrap_or_default(),
            )
        } else {
            None
        }
    }

    pub(crate) fn mark_lost(&self, why: &str) {
        if let Ok(mut w) = self.lost_reason.lock() {
            *w = why.to_string();
        }
        self.lost.store(true, Ordering::SeqCst);
    }

    #[cfg(target_arch = "wasm32")]
    pub(crate) fn uncaptured_sink(&self) -> Arc<Mutex<Vec<String>>> {
        self.uncaptured.clone()
    }

    /// Errors that reached the uncaptured handler since the last call.
    pub(crate) fn take_uncaptured(&self) -> Vec<String> {
        self.uncaptured
            .lock()
            .map(|mut v| std::mem::take(&mut *v))
            .unwrap_or_default()
    }
}

/// The process-wide context (native): created on first use, shared by every model, so
/// shaders compile once per process. The error is remembered too: a machine without a
/// GPU answers at once after the first try.
#[cfg(not(target_arch = "wasm32"))]
pub fn shared() -> Result<Arc<GpuContext>, Unavailable> {
    use std::sync::OnceLock;
    static CX: OnceLock<Result<Arc<GpuContext>, Unavailable>> = OnceLock::new();
    CX.get_or_init(|| {
        // Some drivers panic inside instance creation instead of failing; that is a
        // reason to use the CPU, not a crash.
        std::panic::catch_unwind(|| pollster::block_on(GpuContext::new()).map(Arc::new))
            .unwrap_or_else(|_| {
                Err(Unavailable::NoAdapter(
                    "the driver panicked during set-up".into(),
                ))
            })
    })
    .clone()
}

/// The page's (or worker's) context, created on first use and kept while it lives;
/// a lost device is replaced on the next load.
#[cfg(target_arch = "wasm32")]
pub async fn shared_web() -> Result<Arc<GpuContext>, Unavailable> {
    use std::cell::RefCell;
    thread_local! {
        static CX: RefCell<Option<Result<Arc<GpuContext>, Unavailable>>> = const { RefCell::new(None) };
    }
    if let Some(r) = CX.with(|c| c.borrow().clone()) {
        match &r {
            Ok(cx) if cx.lost().is_some() => {}
            _ => return r,
        }
    }
    let r = GpuContext::new().await.map(Arc::new);
    CX.with(|c| *c.borrow_mut() = Some(r.clone()));
    r
}

//! The cloud's commands as types, decoded once from the event's JSON with the request
//! contracts of CONTROL-PLANE.md (checked in table order: BASE_MESSAGE, then `device_id`,
//! then the topic's own fields). Unknown keys are ignored.

use std::collections::BTreeMap;

use ipc::MacAddr;
use serde::Serialize;
use serde_json::{Number, Value};

use super::fields::{ContractError, Fields, object};
use super::period::{Period, parse_period};

/// BASE_MESSAGE: what every request may carry.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Meta {
    pub correlation_id: Option<Number>,
    pub action: Option<String>,
    pub requested_at: Option<String>,
}

/// One vNIC of `create_new_runtime`.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VnicRequest {
    pub name: String,
    pub parent_interface: String,
    pub network_mode: String,
    pub ip: Option<String>,
    pub subnet: Option<String>,
    pub gateway: Option<String>,
    pub mac: Option<MacAddr>,
    pub dns: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct CreateRuntime {
    pub container_name: String,
    pub vnic_configs: Vec<VnicRequest>,
    /// Kept as sent: the agent passes serial ports through without reading them.
    pub serial_configs: Option<Vec<Value>>,
    pub runtime_version: Option<String>,
    pub dedicated_interface: Option<String>,
}

/// A file of `run_command`'s multipart upload.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct UploadFile {
    pub filename: String,
    pub content_base64: String,
    pub content_type: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct RunCommand {
    pub device_id: String,
    pub method: String,
    pub api: String,
    pub port: u16,
    pub headers: BTreeMap<String, String>,
    pub data: Option<Value>,
    pub params: Option<serde_json::Map<String, Value>>,
    pub files: BTreeMap<String, UploadFile>,
}

/// Every topic the cloud sends.
#[derive(Clone, Debug, PartialEq)]
pub enum Command {
    CreateRuntime(CreateRuntime),
    DeleteDevice {
        device_id: String,
    },
    StartDevice {
        device_id: String,
    },
    StopDevice {
        device_id: String,
    },
    RestartDevice {
        device_id: String,
    },
    GetDeviceStatus {
        device_id: String,
    },
    GetHostInterfaces {
        include_virtual: bool,
        detailed: bool,
    },
    GetConsumptionDevice {
        device_id: String,
        cpu_period: Period,
        memory_period: Period,
    },
    GetConsumptionOrchestrator {
        cpu_period: Period,
        memory_period: Period,
    },
    RunCommand(RunCommand),
    DeleteOrchestrator,
}

/// Every topic name, as on the wire.
pub const TOPICS: [&str; 11] = [
    "create_new_runtime",
    "delete_device",
    "start_device",
    "stop_device",
    "restart_device",
    "get_device_status",
    "get_host_interfaces",
    "get_consumption_device",
    "get_consumption_orchestrator",
    "run_command",
    "delete_orchestrator",
];

impl Command {
    /// The topic this command came as (the ack's `action`).
    pub fn topic(&self) -> &'static str {
        match self {
            Command::CreateRuntime(_) => "create_new_runtime",
            Command::DeleteDevice { .. } => "delete_device",
            Command::StartDevice { .. } => "start_device",
            Command::StopDevice { .. } => "stop_device",
            Command::RestartDevice { .. } => "restart_device",
            Command::GetDeviceStatus { .. } => "get_device_status",
            Command::GetHostInterfaces { .. } => "get_host_interfaces",
            Command::GetConsumptionDevice { .. } => "get_consumption_device",
            Command::GetConsumptionOrchestrator { .. } => "get_consumption_orchestrator",
            Command::RunCommand(_) => "run_command",
            Command::DeleteOrchestrator => "delete_orchestrator",
        }
    }

    /// The runtime name whose commands must not overlap: the ones that change a runtime.
    /// Reads (status, consumption, run_command) are not held behind a slow start or stop,
    /// so the cloud can poll progress while one runs.
    pub fn serialised_name(&self) -> Option<&str> {
        match self {
            Command::CreateRuntime(c) => Some(&c.container_name),
            Command::DeleteDevice { device_id }
            | Command::StartDevice { device_id }
            | Command::StopDevice { device_id }
            | Command::RestartDevice { device_id } => Some(device_id),
            _ => None,
        }
    }
}

/// A decoded request.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub meta: Meta,
    pub command: Command,
}

/// Why an event is not a command.
#[derive(Clone, Debug, PartialEq)]
pub enum DecodeError {
    /// Not a topic of the protocol: logged once and ignored, as the older agent does.
    UnknownTopic,
    /// Answered `{"status":"error","error":TEXT}` with the request's correlation id.
    Contract {
        correlation_id: Option<Number>,
        error: ContractError,
    },
}

/// Decodes the event `topic` with argument `data`.
pub fn decode(topic: &str, data: &Value) -> Result<Request, DecodeError> {
    if !TOPICS.contains(&topic) {
        return Err(DecodeError::UnknownTopic);
    }
    let correlation_id = match data.get("correlation_id") {
        Some(Value::Number(n)) => Some(n.clone()),
        _ => None,
    };
    let contract = |error| DecodeError::Contract {
        correlation_id: correlation_id.clone(),
        error,
    };
    let f = object(data, "the request").map_err(contract)?;
    let meta = Meta {
        correlation_id: f.opt_number("correlation_id").map_err(contract)?,
        action: f.opt_str("action").map_err(contract)?,
        requested_at: f.opt_iso("requested_at").map_err(contract)?,
    };
    let command = decode_command(topic, &f).map_err(contract)?;
    Ok(Request { meta, command })
}

fn decode_command(topic: &str, f: &Fields) -> Result<Command, ContractError> {
    let dev = || f.non_empty("device_id");
    let period = |key: &str| -> Result<Period, ContractError> {
        Ok(f.opt_str(key)?
            .map(|s| parse_period(&s))
            .unwrap_or(Period::DEFAULT))
    };
    Ok(match topic {
        "create_new_runtime" => Command::CreateRuntime(decode_create(f)?),
        "delete_device" => Command::DeleteDevice { device_id: dev()? },
        "start_device" => Command::StartDevice { device_id: dev()? },
        "stop_device" => Command::StopDevice { device_id: dev()? },
        "restart_device" => Command::RestartDevice { device_id: dev()? },
        "get_device_status" => Command::GetDeviceStatus { device_id: dev()? },
        "get_host_interfaces" => Command::GetHostInterfaces {
            include_virtual: f.opt_bool("include_virtual")?.unwrap_or(false),
            detailed: f.opt_bool("detailed")?.unwrap_or(true),
        },
        "get_consumption_device" => Command::GetConsumptionDevice {
            device_id: dev()?,
            cpu_period: period("cpuPeriod")?,
            memory_period: period("memoryPeriod")?,
        },
        "get_consumption_orchestrator" => Command::GetConsumptionOrchestrator {
            cpu_period: period("cpuPeriod")?,
            memory_period: period("memoryPeriod")?,
        },
        "run_command" => Command::RunCommand(decode_run(f)?),
        "delete_orchestrator" => Command::DeleteOrchestrator,
        _ => unreachable!("decode checked the topic against TOPICS"),
    })
}

fn decode_create(f: &Fields) -> Result<CreateRuntime, ContractError> {
    let container_name = f.non_empty("container_name")?;
    let vnic_configs = f
        .list("vnic_configs")?
        .iter()
        .map(decode_vnic)
        .collect::<Result<Vec<_>, _>>()?;
    let serial_configs = f.opt_list("serial_configs")?.cloned();
    let runtime_version = f.opt_str("runtime_version")?;
    let dedicated_interface = f.opt_str("dedicated_interface")?;
    if let Some(name) = &dedicated_interface {
        check_ifname(name)?;
    }
    Ok(CreateRuntime {
        container_name,
        vnic_configs,
        serial_configs,
        runtime_version,
        dedicated_interface,
    })
}

fn decode_vnic(v: &Value) -> Result<VnicRequest, ContractError> {
    let f = object(v, "each vnic_configs entry")?;
    let mac = match f.opt_str("mac")? {
        None => None,
        Some(s) => Some(
            s.parse::<MacAddr>()
                .map_err(|e| ContractError::Invalid(format!("vnic_configs mac: {e}")))?,
        ),
    };
    Ok(VnicRequest {
        name: f.str("name")?,
        parent_interface: f.str("parent_interface")?,
        network_mode: f.str("network_mode")?,
        ip: f.opt_str("ip")?,
        subnet: f.opt_str("subnet")?,
        gateway: f.opt_str("gateway")?,
        mac,
        dns: f.opt_list_of_strings("dns")?,
    })
}

/// An interface name the kernel accepts: 1-15 characters of `[a-zA-Z0-9_.-]`.
fn check_ifname(name: &str) -> Result<(), ContractError> {
    let ok = (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ContractError::Invalid(format!(
            "dedicated_interface {name:?} is not an interface name (1-15 characters of a-z, A-Z, 0-9, '_', '.', '-')"
        )))
    }
}

fn decode_run(f: &Fields) -> Result<RunCommand, ContractError> {
    let device_id = f.non_empty("device_id")?;
    let method = f.str("method")?.to_ascii_uppercase();
    if !["GET", "POST", "PUT", "DELETE"].contains(&method.as_str()) {
        return Err(ContractError::Invalid(format!(
            "method {method:?} is not one of GET, POST, PUT, DELETE"
        )));
    }
    let api = f.str("api")?;
    let port = match f.opt_number("port")? {
        None => 8443,
        Some(n) => n
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .filter(|&p| p > 0)
            .ok_or_else(|| {
                ContractError::Invalid(format!("port {n} is not a TCP port (1-65535)"))
            })?,
    };
    let mut headers = BTreeMap::new();
    for (k, v) in f.opt_object("headers")?.into_iter().flatten() {
        match v {
            Value::String(s) => headers.insert(k.clone(), s.clone()),
            other => headers.insert(k.clone(), other.to_string()),
        };
    }
    let mut files = BTreeMap::new();
    for (field, spec) in f.opt_object("files")?.into_iter().flatten() {
        let s = object(spec, "each files entry")?;
        files.insert(
            field.clone(),
            UploadFile {
                filename: s.str("filename")?,
                content_base64: s.str("content_base64")?,
                content_type: s.opt_str("content_type")?,
            },
        );
    }
    Ok(RunCommand {
        device_id,
        method,
        api,
        port,
        headers,
        data: f.opt_value("data"),
        params: f.opt_object("params")?.cloned(),
        files,
    })
}

#[cfg(test)]
#[path = "command_tests.rs"]
mod tests;

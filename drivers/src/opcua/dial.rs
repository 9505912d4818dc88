//! The TCP connection to an OPC-UA server, with its host name resolved by
//! the process's resolver ([`crate::resolve`]: its own timeout, a cache, a
//! bound on lookups in flight) instead of the library's lookup on tokio's
//! blocking pool, which a dead name server ties up for as long as the C
//! library waits. Used for the discovery (GetEndpoints) and the session.

use opcua::client::transport::{
    Connector, StreamConnection, StreamConnector, TcpTransport, TransportConfiguration,
};
use opcua::client::ConnectionSource;
use opcua::core::comms::tcp_codec::TcpCodec;
use opcua::core::comms::url::hostname_port_from_url;
use opcua::types::{DecodingOptions, EndpointDescription, Error, StatusCode};
use tokio::io::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_util::codec::FramedRead;

/// The OPC-UA port when a URL names none.
const DEFAULT_PORT: u16 = 4840;

/// `host:port` of an `opc.tcp://` URL, for the resolver.
pub(super) fn endpoint_of(url: &str) -> Result<String, StatusCode> {
    // `url` gives an IPv6 host in brackets, as `host:port` needs it.
    let (host, port) = hostname_port_from_url(url, DEFAULT_PORT)?;
    Ok(format!("{host}:{port}"))
}

/// Connects to the server of `url` (after resolving its host name).
async fn connect_tcp(
    url: String,
    decoding: DecodingOptions,
) -> Result<StreamConnection<ReadHalf<TcpStream>, WriteHalf<TcpStream>>, Error> {
    let endpoint = endpoint_of(&url).map_err(|code| Error::new(code, url.clone()))?;
    // A spawned task: the library wants a future that is Sync, and the
    // resolver's is not.
    let addrs = tokio::spawn(async move { crate::resolve::resolve(&endpoint).await })
        .await
        .map_err(|e| Error::new(StatusCode::BadInternalError, e.to_string()))?
        .map_err(|e| Error::new(StatusCode::BadTcpEndpointUrlInvalid, e.message))?;
    let socket = TcpStream::connect(&addrs[..]).await.map_err(|e| {
        Error::new(
            StatusCode::BadCommunicationError,
            format!("cannot connect to {url}: {e}"),
        )
    })?;
    let _ = socket.set_nodelay(true);
    let (reader, writer) = tokio::io::split(socket);
    Ok(StreamConnection::new(
        FramedRead::new(reader, TcpCodec::new(decoding)),
        writer,
        url,
    ))
}

/// A connector to one `opc.tcp://` URL through the resolver.
pub(super) struct ResolvingConnector {
    url: String,
}

impl ResolvingConnector {
    /// A connector to `url`.
    pub(super) fn new(url: &str) -> Self {
        Self { url: url.into() }
    }
}

impl Connector for ResolvingConnector {
    type Transport = TcpTransport;

    async fn connect(
        &self,
        channel: std::sync::Arc<opcua::client::transport::SecureChannelState>,
        outgoing_recv: opcua::client::transport::RequestRecv,
        config: TransportConfiguration,
    ) -> Result<TcpTransport, Error> {
        StreamConnector::new(connect_tcp, self.url.clone())
            .connect(channel, outgoing_recv, config)
            .await
    }

    fn default_endpoint(&self) -> EndpointDescription {
        EndpointDescription::from(self.url.as_str())
    }
}

/// The session's connection source: its endpoint's URL through the resolver.
pub(super) struct ResolvingSource;

impl ConnectionSource for ResolvingSource {
    type Builder = ResolvingConnector;

    fn get_connector(&self, endpoint: &EndpointDescription) -> Result<Self::Builder, Error> {
        Ok(ResolvingConnector::new(endpoint.endpoint_url.as_ref()))
    }
}

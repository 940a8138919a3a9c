//! LiveKit for cxb-core: the room seam ([`room`]), the server API ([`server_api`]), access
//! tokens ([`token`]), the SIP rules ([`sip`]) and an in-memory room for tests ([`fake`]).

pub mod fake;
pub mod room;
pub mod server_api;
pub mod sip;
pub mod token;

pub use fake::{FakeConnector, FakeRoom};
pub use server_api::{
    CreateSipParticipant, ParticipantDetails, ServerApi, ServerApiConfig, ServerApiError, SipParticipantInfo,
    TransferSipParticipant,
};
pub use sip::{normalize_dial_number, transfer_destination, PhoneError, SipOutcome, TransferDestinationError};
pub use token::{JoinGrant, TokenError, TokenIssuer};

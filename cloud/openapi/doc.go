// Package openapi is the shared core of dnsaccel's Alibaba Cloud OpenAPI
// emulator (bin/cloud-emulator): the RPC-style protocol the real SDK
// (github.com/aliyun/alibaba-cloud-sdk-go) speaks, with none of a product's
// semantics. Products (cloud/pvtz, cloud/ecs) plug into one Server.
//
// What the Server does for every request, before a product sees it:
//
//   - parses the parameters from the query string and, for POST, an
//     application/x-www-form-urlencoded body (GET and POST both accepted);
//   - checks signature v1: HMAC-SHA1 over
//     METHOD + "&%2F&" + percentEncode(sorted "k=v&..." of every parameter
//     but Signature), key = AccessKeySecret + "&", exactly as
//     sdk/auth/rpc_signature_composer.go signs (Go url.Values encoding with
//     "+"→"%20", "*"→"%2A", "%7E"→"~"). Unknown AccessKeyId →
//     404 InvalidAccessKeyId.NotFound; mismatch → 400 SignatureDoesNotMatch
//     (the message carries the server string to sign, as the real service
//     does); a reused SignatureNonce → 400 SignatureNonceUsed; a Timestamp more
//     than 15 minutes off → 400 InvalidTimeStamp.Expired; STS credentials need
//     the matching SecurityToken;
//   - routes by Version (and, if two products share a version, by the first
//     label of the Host header) to a registered Product, then by Action;
//     unknown action → 404 InvalidAction.NotFound;
//   - injects faults: a per-action token bucket (Config.ThrottleQPS, over it
//     400 Throttling.User), Config.FaultRate (503 ServiceUnavailable or a
//     dropped connection, before or after the action ran), Config.Latency;
//   - writes the answer as JSON or XML (Format parameter, default JSON) with
//     RequestId first, errors in the real shape
//     {RequestId, HostId, Code, Message, Recommend};
//   - appends an Entry to the request log (memory, GET /_emulator/requests,
//     and an optional JSON-lines file); secrets and signatures never appear;
//   - persists product state to Config.StateFile (atomic rename) after write
//     actions, coalesced, and on Close.
//
// Registering a product:
//
//	p := &openapi.Product{
//		Name:    "ecs",                // lower-case product code
//		Version: "2014-05-26",         // the SDK's API version
//		Domain:  "ecs.aliyuncs.com",   // HostId in errors
//		Actions: map[string]openapi.Action{
//			"DescribeInstances": {Handler: s.describeInstances},
//			"CreateNetworkInterface": {Handler: s.createNI, Write: true},
//		},
//		State: s, // optional openapi.Stateful: Snapshot/Restore for --state
//	}
//	srv.Register(p)
//
// A Handler gets the parsed *Request (Params, AccessKeyID, RegionID, ...)
// and returns a response value (a struct with json and xml tags, the fields
// as the real API names them, without RequestId, which the Server adds) or
// an error; return *openapi.Error (openapi.Errorf, openapi.InvalidParameter,
// openapi.MissingParameter) for API errors, anything else becomes 500
// InternalError. Handlers run concurrently: a product locks its own state.
// Write: true marks actions that change state (they trigger persistence and
// count as writes in the request log and stats).
//
// Extra HTTP endpoints that are not RPC (an instance-metadata service, say)
// can be mounted with Server.Handle; paths under /_emulator/ are the
// emulator's own (requests, stats, healthz).
package openapi
